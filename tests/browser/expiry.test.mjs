// An order left unpaid: the countdown turns into "Order expired", and once
// the expiration service has cancelled it the ticket is back on the list.
// Needs a short window: `dev fleet --expiration-window 10`.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  WINDOW_SECONDS, eventually, launch, listed, secondsLeft, sellTicket, signUp, submitUntil, uniqueEmail, uniqueTitle, visitor,
  withScreenshot,
} from './support.mjs';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

test('an order left to expire shows "Order expired" and the ticket is back on the list', {
  timeout: 60_000 + WINDOW_SECONDS * 1_000,
  skip: WINDOW_SECONDS > 60 ? `the order window is ${WINDOW_SECONDS}s: run with --expiration-window 10` : false,
}, async () => {
  const title = uniqueTitle('Match');
  const seller = await visitor(browser);
  await signUp(seller, uniqueEmail('seller'));
  await sellTicket(seller, title, '40');

  const buyer = await visitor(browser);
  await withScreenshot(buyer, 'expiry-1-order-expired', async () => {
    await signUp(buyer, uniqueEmail('buyer'));
    await eventually(buyer, '/', (page) => listed(page, title), { what: `${title} on the list` });
    await buyer.getByRole('link', { name: title, exact: true }).click();
    await submitUntil(buyer, 'Purchase', /^\/orders\/[0-9a-f]{24}$/);
    const orderPath = new URL(buyer.url()).pathname;

    const left = await secondsLeft(buyer);
    assert.ok(left > 0 && left <= WINDOW_SECONDS, `seconds left: ${left}`);
    // The countdown runs out in the page itself...
    await buyer.getByRole('heading', { name: 'Order expired' }).waitFor({ timeout: (WINDOW_SECONDS + 5) * 1_000 });
    assert.equal(await buyer.getByRole('button', { name: 'Pay with test card' }).isVisible(), false);
    // ...and the server agrees when the page is loaded again.
    await buyer.goto(orderPath);
    await buyer.getByRole('heading', { name: 'Order expired' }).waitFor();
  });

  await withScreenshot(seller, 'expiry-2-ticket-back-on-sale', async () => {
    await eventually(seller, '/', (page) => listed(page, title), { what: `${title} back on the list`, timeout: 30_000 });
  });

  await withScreenshot(buyer, 'expiry-3-order-cancelled-in-my-orders', async () => {
    await eventually(buyer, '/orders', async (page) => {
      const row = page.getByRole('row').filter({ hasText: title });
      return (await row.getByText('cancelled', { exact: true }).count()) === 1;
    }, { what: `order for ${title} cancelled in My orders` });
  });
});
