// Signing in with a wrong password shows the API's message in the form, on a
// phone-width screen; the right password then signs in.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { PASSWORD, launch, signOut, signUp, submit, uniqueEmail, visitor, withScreenshot } from './support.mjs';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

test('signing in with a wrong password shows the error next to the form', { timeout: 60_000 }, async () => {
  const page = await visitor(browser, { phone: true });
  const email = uniqueEmail('forgetful');
  await withScreenshot(page, 'signin-wrong-password', async () => {
    await signUp(page, email);
    await signOut(page);

    await page.getByRole('navigation').getByRole('link', { name: 'Sign in' }).click();
    await page.getByLabel('Email').fill(email);
    await page.getByLabel('Password').fill('not-the-password');
    await submit(page, 'Sign in');

    const form = page.locator('main form');
    await form.getByRole('alert').getByText('Invalid credentials').waitFor();
    assert.equal(await page.getByLabel('Email').inputValue(), email, 'the email is kept');
    assert.equal(await page.getByLabel('Password').inputValue(), '', 'the password is not');
    assert.equal(await page.getByText(/Signed in as/).count(), 0);
    // Usable at phone width: nothing wider than the screen.
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than the screen`);
  });

  await page.getByLabel('Password').fill(PASSWORD);
  await submit(page, 'Sign in');
  await page.getByText(`Signed in as ${email}`).waitFor();
});

test('signing up with an invalid email shows the message by the field', { timeout: 60_000 }, async () => {
  const page = await visitor(browser);
  await withScreenshot(page, 'signup-invalid-email', async () => {
    await page.goto('/auth/signup');
    await page.getByLabel('Email').fill('not-an-email');
    await page.getByLabel('Password').fill(PASSWORD);
    await submit(page, 'Sign up');
    const email = page.getByLabel('Email');
    assert.equal(await email.getAttribute('aria-invalid'), 'true');
    const describedBy = await email.getAttribute('aria-describedby');
    assert.equal(await page.locator(`#${describedBy}`).innerText(), 'Email must be valid');
  });
});
