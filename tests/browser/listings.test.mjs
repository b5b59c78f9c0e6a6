// Finding a ticket and managing one's listings in a real browser, without
// JavaScript needed: the search box and price filter on the landing page,
// next/previous pages and the empty state; My listings with each ticket's
// status and Withdraw; the face value on the sell form and the ticket page.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  eventually, launch, listed, sellTicket, signUp, submit, uniqueEmail, visitor, withScreenshot,
} from './support.mjs';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

let counter = 0;
/** A word no other test's titles contain. */
function uniqueWord(prefix) {
  counter += 1;
  return `${prefix}${Date.now() % 1_000_000}x${process.pid}x${counter}`;
}

/** Searches from the landing page's form; ends on the results. */
async function search(page, q, { maxPrice = '' } = {}) {
  await page.goto('/');
  await page.getByLabel('Search').fill(q);
  await page.getByLabel('Max price').fill(maxPrice);
  await submit(page, 'Search');
}

/** The titles of the ticket cards on the page, in order. */
async function titles(page) {
  return page.locator('.ticket-card .ticket-title').allInnerTexts();
}

test('the search box finds titles by word prefixes, whatever the accents and case, and says when nothing matches', { timeout: 90_000 }, async () => {
  const word = uniqueWord('zq');
  const page = await visitor(browser);
  await withScreenshot(page, 'listings-1-search', async () => {
    await signUp(page, uniqueEmail('seller'));
    await sellTicket(page, `Beyoncé Zénith ${word}`, '80');
    await sellTicket(page, `Beyoncé Stadium ${word}`, '120');

    await eventually(page, '/', async () => {
      await search(page, `ZENI ${word.toUpperCase()}`);
      return (await titles(page)).length === 1;
    }, { what: 'the search result' });
    assert.deepEqual(await titles(page), [`Beyoncé Zénith ${word}`]);
    assert.equal(await page.getByLabel('Search').inputValue(), `ZENI ${word.toUpperCase()}`, 'the box keeps the search');

    await search(page, `beyonce ${word}`, { maxPrice: '100' });
    assert.deepEqual(await titles(page), [`Beyoncé Zénith ${word}`]);

    await search(page, `nothing ${word}`);
    await page.getByRole('heading', { name: 'No tickets match your search' }).waitFor();

    await search(page, word, { maxPrice: 'cheap' });
    assert.equal(await page.locator('#maxPrice-error').count(), 1, 'the bad filter is flagged by its field');
  });
});

test('a long list pages forward and back', { timeout: 120_000 }, async () => {
  const word = uniqueWord('pg');
  const page = await visitor(browser);
  await withScreenshot(page, 'listings-2-paging', async () => {
    await signUp(page, uniqueEmail('seller'));
    // 30 tickets through the API, with the browser's own session.
    for (let n = 0; n < 30; n += 1) {
      const reply = await page.request.post('/api/tickets', { data: { title: `Gig ${n} ${word}`, price: 10 + n } });
      assert.equal(reply.status(), 201);
    }
    await page.goto(`/?q=${word}&sort=price`);
    const first = await titles(page);
    assert.equal(first.length, 24, 'a page of 24');
    assert.equal(first[0], `Gig 0 ${word}`);
    assert.equal(await page.getByRole('link', { name: '← Previous' }).count(), 0, 'no previous page on the first');

    await page.getByRole('link', { name: 'Next →' }).click();
    await page.waitForLoadState('domcontentloaded');
    const second = await titles(page);
    assert.deepEqual(second, [24, 25, 26, 27, 28, 29].map((n) => `Gig ${n} ${word}`));
    assert.equal(await page.getByRole('link', { name: 'Next →' }).count(), 0, 'the last page has no next');
    assert.equal(await page.getByLabel('Search').inputValue(), word, 'the search is kept across pages');

    await page.getByRole('link', { name: '← Previous' }).click();
    await page.waitForLoadState('domcontentloaded');
    assert.deepEqual(await titles(page), first);
  });
});

test('a seller sees their listings with their status, withdraws one, and it is gone', { timeout: 90_000 }, async () => {
  const word = uniqueWord('wd');
  const page = await visitor(browser);
  await withScreenshot(page, 'listings-3-withdraw', async () => {
    await signUp(page, uniqueEmail('seller'));
    await page.getByRole('navigation').getByRole('link', { name: 'Sell tickets' }).click();
    await page.getByLabel('Title').fill(`Keep ${word}`);
    await page.getByLabel('Price').fill('20');
    await page.getByLabel('Face value').fill('25');
    await page.getByRole('button', { name: 'List ticket' }).click();
    await page.getByText('Your ticket is listed for sale.').waitFor();
    assert.match(await page.locator('[data-face-value]').innerText(), /Face value: \$25/);
    const gone = await sellTicket(page, `Withdraw ${word}`, '30');
    assert.match(await page.locator('[data-face-value]').innerText(), /No face value/);

    await page.getByRole('navigation').getByRole('link', { name: 'My listings' }).click();
    await page.getByRole('heading', { level: 1, name: 'My listings' }).waitFor();
    const card = page.locator('.ticket-card').filter({ hasText: `Withdraw ${word}` });
    assert.equal(await card.locator('[data-status]').innerText(), 'available');

    await Promise.all([
      page.waitForNavigation({ waitUntil: 'domcontentloaded' }),
      card.getByRole('button', { name: /Withdraw/ }).click(),
    ]);
    await page.getByText('Your ticket was withdrawn from sale.').waitFor();
    assert.equal(await page.locator('.ticket-card').filter({ hasText: `Withdraw ${word}` }).count(), 0);
    assert.equal(await page.locator('.ticket-card').filter({ hasText: `Keep ${word}` }).count(), 1);

    await page.goto(`/?q=${word}`);
    assert.ok(await listed(page, `Keep ${word}`));
    assert.ok(!(await listed(page, `Withdraw ${word}`)), 'withdrawn: not for sale');
    const reply = await page.goto(gone);
    assert.equal(reply.status(), 404);
  });
});
