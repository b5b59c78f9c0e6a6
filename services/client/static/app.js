// Ticketing's only script: the order countdown and Stripe's card form.
// Pages work without it; it only makes the order page live.
(function () {
  "use strict";

  function plural(n) {
    return n + (n === 1 ? " second" : " seconds");
  }

  // Counts down from the seconds the server computed (so the visitor's clock
  // does not matter) and turns into "Order expired" at zero.
  function startCountdown(root) {
    var timer = root.querySelector("[data-seconds-left]");
    var label = root.querySelector("[data-countdown]");
    var expired = root.querySelector("[data-expired-message]");
    var pay = root.querySelector("[data-pay]");
    if (!timer || !label) return;
    var deadline = Date.now() + Number(timer.getAttribute("data-seconds-left")) * 1000;

    function tick() {
      var left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
      if (left > 0) {
        label.textContent = plural(left);
        return true;
      }
      timer.hidden = true;
      if (pay) pay.hidden = true;
      var status = document.querySelector("[data-status]");
      if (status) status.hidden = true;
      if (expired) expired.hidden = false;
      return false;
    }

    if (tick()) {
      var interval = setInterval(function () {
        if (!tick()) clearInterval(interval);
      }, 250);
    }
  }

  // With a publishable key: Stripe.js's Card Element, confirmed against the
  // order's PaymentIntent (3-D Secure runs in Stripe's dialog when the bank
  // asks); on success back to the order page, which waits for the webhook.
  function startStripe(form) {
    var key = form.getAttribute("data-stripe-key");
    var secret = form.getAttribute("data-client-secret");
    if (!key || !secret || typeof window.Stripe !== "function") return;
    var stripe = window.Stripe(key);
    var card = stripe.elements().create("card");
    card.mount(form.querySelector("#card-element"));
    var errors = form.querySelector("#card-errors");
    var button = form.querySelector("button[type=submit]");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (button.disabled) return;
      button.disabled = true;
      errors.textContent = "";
      stripe
        .confirmCardPayment(secret, { payment_method: { card: card } })
        .then(function (result) {
          if (result.error) {
            errors.textContent = result.error.message || "The payment failed. Please try another card.";
            button.disabled = false;
            return;
          }
          window.location.assign(form.getAttribute("data-return-url"));
        });
    });
  }

  // A form is sent once: a double click must not buy or pay twice.
  function guardDoubleSubmit(form) {
    form.addEventListener("submit", function (event) {
      if (event.defaultPrevented) return;
      if (form.getAttribute("data-sent")) {
        event.preventDefault();
        return;
      }
      form.setAttribute("data-sent", "1");
    });
  }

  // Coming back through the history cache, the forms may be sent again.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    document.querySelectorAll("form[data-sent]").forEach(function (form) {
      form.removeAttribute("data-sent");
    });
  });

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-countdown-root]").forEach(startCountdown);
    document.querySelectorAll("form[data-stripe-key]").forEach(startStripe);
    document.querySelectorAll("form[method=post]:not([data-client-secret])").forEach(guardDoubleSubmit);
  });
})();
