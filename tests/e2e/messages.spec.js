// Room messages and metadata (protocol version 3) on the demo page in real Chromium: chat lines
// and likes go through the server to every page of the room, the sender's too; the server API's
// messages and metadata reach the pages as its events, and a page that joins later finds the
// metadata in its join reply.
import { test, expect } from '@playwright/test';

let roomSeq = 0;
const newRoom = () => `e2e-msg-${process.pid}-${Date.now().toString(36)}-${roomSeq++}`;

// A page in its own browser context (own sessionStorage, so its own user id), joined to `room`.
async function join(browser, { room, name, role }) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => console.log(`[${name}] page error: ${e.message}`));
  await page.goto('/');
  await page.getByLabel('Room').fill(room);
  await page.getByLabel('Your name').fill(name);
  await page.getByLabel(role === 'anchor' ? 'Anchor: go live' : 'Audience: watch').check();
  await page.getByRole('button', { name: 'Join' }).click();
  await expect(page.locator('#stage')).toBeVisible();
  return { page, context, name };
}

const lines = (p) => p.page.locator('#chat-lines li');

async function say(p, text) {
  await p.page.getByLabel('Chat message').fill(text);
  await p.page.getByLabel('Chat message').press('Enter');
}

test('room messages: chat lines and likes reach every page, the server API posts and sets the banner, a later viewer sees the banner at once', async ({ browser, request }) => {
  const room = newRoom();
  const api = (what) => `/api/v1/rooms/${room}/${what}`;
  const anchor = await join(browser, { room, name: 'Anchor Ann', role: 'anchor' });
  const viewer = await join(browser, { room, name: 'Viewer Vic', role: 'audience' });
  const both = [anchor, viewer];
  // A new room has no metadata ("") and so no banner; nothing said, nothing liked.
  for (const p of both) {
    await expect(p.page.locator('#room-banner')).toBeHidden();
    await expect(lines(p)).toHaveCount(0);
    await expect(p.page.locator('#like-count')).toHaveText('0');
  }

  // The viewer says something (Enter sends): the anchor's page shows it, and so does the
  // viewer's own, from the server's broadcast.
  await say(viewer, 'hello from Vic');
  for (const p of both) await expect(lines(p)).toHaveText(['Viewer Vic: hello from Vic']);
  await expect(viewer.page.locator('#chat-input')).toHaveValue('');

  // The anchor answers with the button; markup in a message stays text on every page.
  await anchor.page.locator('#chat-input').fill('<b>welcome</b> Vic');
  await anchor.page.locator('#chat-send').click();
  for (const p of both) {
    await expect(lines(p)).toHaveText(['Viewer Vic: hello from Vic', 'Anchor Ann: <b>welcome</b> Vic']);
    await expect(p.page.locator('#chat-lines b')).toHaveCount(0);
  }

  // Two likes from the viewer: every page counts them, and they make no chat line.
  await viewer.page.locator('#like-button').click();
  await viewer.page.locator('#like-button').click();
  for (const p of both) {
    await expect(p.page.locator('#like-count')).toHaveText('2');
    await expect(lines(p)).toHaveCount(2);
  }

  // A message from the integrator's backend (the server API, no token on loopback) comes from
  // nobody in the room: the pages show it as the server's.
  const posted = await request.post(api('messages'), { data: { topic: 'chat', data: 'The show starts now' } });
  expect(posted.status(), await posted.text()).toBe(200);
  for (const p of both) await expect(lines(p).last()).toHaveText('server: The show starts now');

  // The backend sets a product card as the room's metadata: every page shows its banner.
  const card = JSON.stringify({ title: 'Blue mug', price: '12 EUR' });
  const put = await request.put(api('metadata'), { data: { metadata: card } });
  expect(put.status(), await put.text()).toBe(200);
  expect(await put.json()).toEqual({});
  for (const p of both) {
    await expect(p.page.locator('#room-banner')).toBeVisible();
    await expect(p.page.locator('#room-banner-title')).toHaveText('Blue mug');
    await expect(p.page.locator('#room-banner-price')).toHaveText('12 EUR');
  }

  // A viewer who joins now has the banner from the join reply, as the stage appears (no event
  // could bring it: the metadata changed before they came), and counts only what comes after.
  const late = await join(browser, { room, name: 'Late Lou', role: 'audience' });
  expect(await late.page.locator('#room-banner').isVisible()).toBe(true);
  expect(await late.page.locator('#room-banner-title').textContent()).toBe('Blue mug');
  expect(await late.page.locator('#room-banner-price').textContent()).toBe('12 EUR');
  await expect(lines(late)).toHaveCount(0);
  await expect(late.page.locator('#like-count')).toHaveText('0');
  const all = [anchor, viewer, late];
  await say(late, 'just arrived');
  for (const p of all) await expect(lines(p).last()).toHaveText('Late Lou: just arrived');

  // Metadata that is not a product card is shown as it is; empty metadata hides the banner.
  await request.put(api('metadata'), { data: { metadata: 'Sale ends at 9 pm' } });
  for (const p of all) await expect(p.page.locator('#room-banner')).toHaveText('Sale ends at 9 pm');
  await request.put(api('metadata'), { data: { metadata: '' } });
  for (const p of all) await expect(p.page.locator('#room-banner')).toBeHidden();

  // Twelve likes at once are more than 5 a second: the server refuses some (rate_limited), the
  // page says so, and every page counts the same likes, the refused ones not among them.
  await viewer.page.evaluate(() => {
    for (let i = 0; i < 12; i++) document.getElementById('like-button').click();
  });
  await expect(viewer.page.locator('#chat-error')).toBeVisible();
  await expect(viewer.page.locator('#chat-error')).toContainText('Slow down');
  const counts = async () => Promise.all(all.map(async (p) => Number(await p.page.locator('#like-count').textContent())));
  await expect
    .poll(async () => {
      const [a, v, l] = await counts();
      return a === v && l === a - 2 && a > 2 && a < 14 ? 'the same likes on every page' : JSON.stringify({ a, v, l });
    })
    .toBe('the same likes on every page');

  for (const p of all) await p.context.close();
});
