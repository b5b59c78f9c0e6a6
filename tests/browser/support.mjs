// Shared helpers for the browser tests: headless Debian Chromium driven by
// playwright-core (installed into .dev/node by scripts/bootstrap.sh — never
// `playwright install`), against the fleet `dev fleet` starts (BASE_URL).

import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const require = createRequire(path.join(root, '.dev', 'node', 'node_modules', '/'));
const { chromium } = require('playwright-core');

/** The ingress of the fleet under test. */
export const BASE_URL = process.env.BASE_URL;
if (!BASE_URL) {
  throw new Error('BASE_URL is not set: run through `dev fleet -- node --test tests/browser/` (see tests/browser/README.md)');
}

/** The fleet's order window, in seconds (`dev fleet --expiration-window`). */
export const WINDOW_SECONDS = Number(process.env.EXPIRATION_WINDOW_SECONDS || 900);

export const ARTIFACTS = path.join(root, 'tests', 'artifacts');

export const PASSWORD = 'correct-horse-battery';

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
      '--disable-sync',
    ],
  });
}

/** A fresh visitor: their own cookies, a desktop or a phone-width screen. */
export async function visitor(browser, { phone = false } = {}) {
  const context = await browser.newContext({
    baseURL: BASE_URL,
    viewport: phone ? { width: 390, height: 844 } : { width: 1280, height: 900 },
  });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  return page;
}

let counter = 0;
/** An address no other test uses. */
export function uniqueEmail(role) {
  counter += 1;
  return `${role}-${Date.now()}-${process.pid}-${counter}@test.com`;
}

/** A ticket title no other test uses. */
export function uniqueTitle(what) {
  counter += 1;
  return `${what} #${Date.now() % 100000}-${counter}`;
}

/** Saves the page as tests/artifacts/<name>.png. */
export async function screenshot(page, name) {
  await mkdir(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name.replace(/[^a-z0-9-]+/gi, '-')}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Runs `body` with the page's last state saved as a screenshot, pass or fail. */
export async function withScreenshot(page, name, body) {
  try {
    await body();
  } finally {
    await screenshot(page, name).catch(() => {});
  }
}

/** Signs a new user up through the form; ends on the page signed in. */
export async function signUp(page, email) {
  await page.goto('/auth/signup');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('main').getByRole('button', { name: 'Sign up' }).click();
  await page.getByText(`Signed in as ${email}`).waitFor();
}

export async function signOut(page) {
  await page.getByRole('navigation').getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('navigation').getByRole('link', { name: 'Sign in' }).waitFor();
}

/** Lists a ticket through the form; returns its page's path. */
export async function sellTicket(page, title, price) {
  await page.getByRole('navigation').getByRole('link', { name: 'Sell tickets' }).click();
  await page.getByRole('heading', { level: 1, name: 'Sell a ticket' }).waitFor();
  await page.getByLabel('Title').fill(title);
  await page.getByLabel('Price').fill(price);
  await page.getByRole('button', { name: 'List ticket' }).click();
  await page.getByText('Your ticket is listed for sale.').waitFor();
  return new URL(page.url()).pathname;
}

/**
 * Clicks a form's button until the page moves on to `leadsTo` — the API
 * services learn of each other's records from events, so for a moment a
 * brand-new ticket (or order) can be "not there yet", which the page says.
 */
export async function submitUntil(page, button, leadsTo, { timeout = 20_000 } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    await submit(page, button);
    if (leadsTo.test(new URL(page.url()).pathname)) return;
    const alert = await page.getByRole('alert').first().textContent().catch(() => '');
    if (!/just yet/.test(alert ?? '') || Date.now() > deadline) {
      throw new Error(`"${button}" did not lead to ${leadsTo}: at ${page.url()} (${alert?.trim()})`);
    }
    await page.waitForTimeout(300);
  }
}

/** Clicks a form's button and waits for the page the form leads to. */
export async function submit(page, button) {
  await Promise.all([
    page.waitForNavigation({ waitUntil: 'domcontentloaded' }),
    page.getByRole('button', { name: button, exact: true }).click(),
  ]);
}

/** Pays a $12.50 order with `number` in Stripe's card form (the fake's Card Element). */
export async function payWith(page, number) {
  await page.locator('input[name=cardnumber]').fill(number);
  await page.getByRole('button', { name: 'Pay $12.50' }).click();
}

/** Waits for the order page to say Paid, its status `complete`. */
export async function paid(page) {
  await page.getByRole('heading', { name: 'Paid' }).waitFor({ timeout: 30_000 });
  assert.match(await page.locator('.status').innerText(), /complete/);
}

/** Reloads `path` until `check(page)` holds, or fails after `timeout`. */
export async function eventually(page, path, check, { timeout = 20_000, what = 'the expected page' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    await page.goto(path);
    if (await check(page)) return;
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what} at ${path}`);
    await page.waitForTimeout(400);
  }
}

/** Whether the landing page lists a ticket with this title. */
export async function listed(page, title) {
  return (await page.getByRole('link', { name: title, exact: true }).count()) > 0;
}

/** The seconds the order page's countdown shows. */
export async function secondsLeft(page) {
  const text = await page.getByRole('timer').textContent();
  const match = /(\d+) seconds?/.exec(text ?? '');
  if (!match) throw new Error(`no countdown in ${JSON.stringify(text)}`);
  return Number(match[1]);
}
