// The whole journey in a real browser: a seller lists a ticket; a buyer buys
// it, sees the countdown, pays with the test card (or, where the order page
// has Stripe's card form, as under `make dev`, with the test Visa) and finds
// the order `complete` in My orders; the ticket is no longer for sale.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  eventually, launch, listed, paid, payWith, secondsLeft, sellTicket, signUp, submitUntil, uniqueEmail, uniqueTitle,
  visitor, withScreenshot,
} from './support.mjs';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

test('a seller lists a ticket and a buyer buys it, pays with the test card and finds it complete', { timeout: 120_000 }, async () => {
  const title = uniqueTitle('Concert');

  // The seller signs up and lists a ticket.
  const seller = await visitor(browser);
  await withScreenshot(seller, 'journey-1-seller-lists-a-ticket', async () => {
    await signUp(seller, uniqueEmail('seller'));
    const ticketPath = await sellTicket(seller, title, '12.5');
    assert.match(ticketPath, /^\/tickets\/[0-9a-f]{24}$/);
    await seller.getByRole('heading', { level: 1, name: title }).waitFor();
    assert.match(await seller.locator('.price-large').innerText(), /\$12\.50$/);
    await seller.goto('/');
    assert.ok(await listed(seller, title), 'the new ticket is on the landing page');
  });

  // The buyer finds it on the landing page, signs up and buys it.
  const buyer = await visitor(browser);
  await withScreenshot(buyer, 'journey-2-buyer-pays', async () => {
    await buyer.goto('/');
    const card = buyer.getByRole('listitem').filter({ has: buyer.getByRole('link', { name: title, exact: true }) });
    await card.getByText('$12.50').waitFor();
    await card.getByRole('link', { name: title, exact: true }).click();
    await buyer.getByRole('link', { name: 'Sign in to buy' }).click();
    await buyer.getByRole('link', { name: 'Create an account' }).click();
    await signUp(buyer, uniqueEmail('buyer'));
    await buyer.getByRole('link', { name: title, exact: true }).click();
    await submitUntil(buyer, 'Purchase', /^\/orders\/[0-9a-f]{24}$/);

    // The order page counts down.
    await buyer.getByRole('heading', { level: 1, name: title }).waitFor();
    const first = await secondsLeft(buyer);
    assert.ok(first > 0, `seconds left: ${first}`);
    await buyer.waitForTimeout(1_500);
    const later = await secondsLeft(buyer);
    assert.ok(later < first, `the countdown ticks: ${first} → ${later}`);

    // With a publishable key (as under `make dev`) the page offers Stripe's
    // card form, once payments has the order's intent; without one, the
    // test card.
    const testCard = buyer.getByRole('button', { name: 'Pay with test card', exact: true });
    const cardNumber = buyer.locator('input[name=cardnumber]');
    await testCard.or(cardNumber).waitFor({ timeout: 20_000 });
    if (await cardNumber.count() > 0) {
      await payWith(buyer, '4242 4242 4242 4242');
      await paid(buyer);
    } else {
      await submitUntil(buyer, 'Pay with test card', /^\/orders$/);
      await buyer.getByText('Payment received').waitFor();
    }

    // My orders shows the order complete (once the payment event is in).
    await eventually(buyer, '/orders', async (page) => {
      const row = page.getByRole('row').filter({ hasText: title });
      return (await row.count()) === 1 && (await row.getByText('complete', { exact: true }).count()) === 1;
    }, { what: `order for ${title} complete in My orders` });
    const row = buyer.getByRole('row').filter({ hasText: title });
    assert.match(await row.innerText(), /\$12\.50/);
  });

  // The ticket is sold: no longer on the list.
  await withScreenshot(seller, 'journey-3-ticket-gone', async () => {
    await eventually(seller, '/', async (page) => !(await listed(page, title)), { what: `${title} gone from the list` });
  });
});
