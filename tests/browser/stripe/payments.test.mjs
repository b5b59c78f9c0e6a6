// Paying on PaymentIntents in a real browser, with the Stripe fake's Stripe.js
// (run by `dev fleet --stripe-js`, see tests/browser/README.md): the order
// page mounts the Card Element, `confirmCardPayment` confirms the order's
// intent (3-D Secure in the fake bank's dialog), the page shows Processing…
// and turns to Paid by itself once Stripe's signed webhook has completed the
// order. A declined card leaves the order payable with Stripe's message.
// Money that lands after the buyer cancelled (in another tab, while the bank
// was asking) is refunded, and the page says Refunded.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  launch, paid, payWith, sellTicket, signUp, submitUntil, uniqueEmail, uniqueTitle, visitor, withScreenshot,
} from '../support.mjs';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

/** A seller lists a ticket; a new buyer buys it and lands on its order page. */
async function orderPage(name) {
  const title = uniqueTitle(name);
  const seller = await visitor(browser);
  await signUp(seller, uniqueEmail('seller'));
  await sellTicket(seller, title, '12.5');
  const ticketPath = new URL(seller.url()).pathname;
  const buyer = await visitor(browser);
  await signUp(buyer, uniqueEmail('buyer'));
  await buyer.goto(ticketPath);
  await submitUntil(buyer, 'Purchase', /^\/orders\/[0-9a-f]{24}$/);
  // Payments learns of the order from an event: the page refreshes until
  // the intent is there and the card field is mounted.
  await buyer.locator('input[name=cardnumber]').waitFor({ timeout: 20_000 });
  return buyer;
}

// The Stripe fake behind the fleet, as the services' secret key sees it.
const STRIPE = process.env.TEST_STRIPE_API_BASE;
const STRIPE_KEY = process.env.STRIPE_KEY || 'sk_test_devstack_local_fake';

async function stripe(method, path, form) {
  const response = await fetch(`${STRIPE}${path}`, {
    method,
    headers: { authorization: `Bearer ${STRIPE_KEY}` },
    body: form && new URLSearchParams(form),
  });
  const body = await response.json();
  assert.ok(response.ok, `${method} ${path}: ${JSON.stringify(body)}`);
  return body;
}

test('a plain card pays: Processing… until the webhook lands, then Paid', { timeout: 120_000 }, async () => {
  const buyer = await orderPage('Plain');
  await withScreenshot(buyer, 'stripe-1-plain-card', async () => {
    await payWith(buyer, '4242 4242 4242 4242');
    await buyer.waitForURL(/\?payment=processing$/);
    await paid(buyer);
  });
});

test('a 3-D Secure card pays after authenticating in the bank dialog', { timeout: 120_000 }, async () => {
  const buyer = await orderPage('Secure');
  await withScreenshot(buyer, 'stripe-2-3ds-card', async () => {
    await payWith(buyer, '4000 0025 0000 3155');
    const dialog = buyer.getByRole('dialog', { name: '3D Secure authentication' });
    await dialog.getByRole('button', { name: 'Complete authentication' }).click();
    await paid(buyer);
  });
});

test('a declined card shows Stripe\'s message and the order stays payable', { timeout: 120_000 }, async () => {
  const buyer = await orderPage('Declined');
  await withScreenshot(buyer, 'stripe-3-declined-card', async () => {
    await payWith(buyer, '4000 0000 0000 0002');
    await buyer.locator('#card-errors').getByText('Your card was declined.').waitFor();
    assert.doesNotMatch(buyer.url(), /payment=processing/);
    await payWith(buyer, '4242 4242 4242 4242');
    await paid(buyer);
  });
});

test('money that lands after the buyer cancelled is refunded, and the page says so', { timeout: 120_000 }, async () => {
  const buyer = await orderPage('Late');
  const orderPath = new URL(buyer.url()).pathname;
  const secret = await buyer.locator('form[data-client-secret]').getAttribute('data-client-secret');
  const intent = secret.split('_secret_')[0];
  // Payments' cancel of the intent reaches Stripe only after the buyer's
  // bank has said yes: the success overtakes it, as it can at Stripe.
  await stripe('POST', '/_fake/hold', {
    method: 'POST', path: `/v1/payment_intents/${intent}/cancel`, seconds: '8', when: 'before',
  });
  await withScreenshot(buyer, 'stripe-4-late-payment', async () => {
    await payWith(buyer, '4000 0025 0000 3155');
    const dialog = buyer.getByRole('dialog', { name: '3D Secure authentication' });
    await dialog.waitFor();
    // Meanwhile, in another tab, the buyer cancels the order.
    const other = await buyer.context().newPage();
    await other.goto(orderPath);
    await other.getByRole('button', { name: 'Cancel order' }).click();
    await other.getByRole('heading', { name: 'Order cancelled' }).waitFor();
    await other.close();
    await dialog.getByRole('button', { name: 'Complete authentication' }).click();
    await buyer.getByRole('heading', { name: 'Refunded' }).waitFor({ timeout: 30_000 });
    await buyer.getByText('refunded in full. The ticket went back on sale.').waitFor({ timeout: 30_000 });
    assert.match(await buyer.locator('.status').innerText(), /cancelled/);
  });
  const refunds = (await stripe('GET', '/v1/refunds')).data.filter((r) => r.payment_intent === intent);
  assert.equal(refunds.length, 1, JSON.stringify(refunds));
  assert.equal(refunds[0].amount, 1250);
  assert.equal((await stripe('GET', `/v1/payment_intents/${intent}`)).status, 'succeeded');
});
