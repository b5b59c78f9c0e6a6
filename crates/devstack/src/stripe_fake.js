/* The devstack Stripe fake's Stripe.js: just enough of https://js.stripe.com/v3/
 * for the order page — Stripe(pk), elements().create('card').mount(el),
 * confirmCardPayment(clientSecret, {payment_method: {card}}) with a 3-D Secure
 * dialog, retrievePaymentIntent(clientSecret). Talks to the fake's API with the
 * publishable key and the intent's client secret, as Stripe.js does. */
(function () {
  "use strict";
  var BASE = "__FAKE_BASE__";

  function form(params) {
    return Object.keys(params)
      .map(function (k) { return encodeURIComponent(k) + "=" + encodeURIComponent(params[k]); })
      .join("&");
  }

  function call(key, method, path, params) {
    var init = { method: method, headers: { Authorization: "Bearer " + key } };
    var url = BASE + path;
    if (method === "GET") {
      url += "?" + form(params);
    } else {
      init.headers["Content-Type"] = "application/x-www-form-urlencoded";
      init.body = form(params);
    }
    return fetch(url, init).then(function (r) { return r.json(); });
  }

  function intentId(clientSecret) { return String(clientSecret).split("_secret_")[0]; }

  function CardElement() { this.input = null; }
  CardElement.prototype.mount = function (target) {
    var host = typeof target === "string" ? document.querySelector(target) : target;
    var input = document.createElement("input");
    input.setAttribute("name", "cardnumber");
    input.setAttribute("autocomplete", "cc-number");
    input.setAttribute("inputmode", "numeric");
    input.setAttribute("placeholder", "Card number");
    input.setAttribute("aria-label", "Card number");
    input.className = "fake-stripe-card";
    host.appendChild(input);
    this.input = input;
  };
  CardElement.prototype.on = function () {};
  CardElement.prototype.number = function () { return this.input ? this.input.value : ""; };

  function authenticate(key, clientSecret, intent) {
    return new Promise(function (resolve) {
      var dialog = document.createElement("div");
      dialog.setAttribute("role", "dialog");
      dialog.setAttribute("aria-label", "3D Secure authentication");
      dialog.className = "fake-stripe-3ds";
      dialog.innerHTML =
        "<p>Test bank: authenticate this payment?</p>" +
        "<button type='button' data-result='succeed'>Complete authentication</button> " +
        "<button type='button' data-result='fail'>Fail authentication</button>";
      dialog.style.cssText = "position:fixed;inset:30% 20%;background:#fff;border:2px solid #333;padding:1em;z-index:9999";
      document.body.appendChild(dialog);
      dialog.addEventListener("click", function (e) {
        var result = e.target && e.target.getAttribute("data-result");
        if (!result) return;
        dialog.remove();
        call(key, "POST", "/_fake/payment_intents/" + intent.id + "/authenticate",
          { client_secret: clientSecret, result: result }).then(resolve);
      });
    });
  }

  function outcome(intent) {
    if (intent.error) return { error: intent.error };
    if (intent.status === "requires_payment_method" && intent.last_payment_error) {
      return { error: Object.assign({}, intent.last_payment_error, { payment_intent: intent }) };
    }
    return { paymentIntent: intent };
  }

  window.Stripe = function (publishableKey) {
    var key = publishableKey;
    return {
      elements: function () {
        return { create: function () { return new CardElement(); } };
      },
      retrievePaymentIntent: function (clientSecret) {
        return call(key, "GET", "/v1/payment_intents/" + intentId(clientSecret), { client_secret: clientSecret })
          .then(function (intent) { return intent.error ? { error: intent.error } : { paymentIntent: intent }; });
      },
      confirmCardPayment: function (clientSecret, data) {
        var card = data && data.payment_method && data.payment_method.card;
        var number = card && card.number ? card.number() : "";
        return call(key, "POST", "/v1/payment_methods", { type: "card", "card[number]": number })
          .then(function (pm) {
            if (pm.error) return pm;
            return call(key, "POST", "/v1/payment_intents/" + intentId(clientSecret) + "/confirm",
              { client_secret: clientSecret, payment_method: pm.id });
          })
          .then(function (intent) {
            if (!intent.error && intent.status === "requires_action") {
              return authenticate(key, clientSecret, intent);
            }
            return intent;
          })
          .then(outcome);
      },
    };
  };
})();
