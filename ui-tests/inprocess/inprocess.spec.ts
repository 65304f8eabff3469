// An in-server agent extension is enabled (QGuardApp.inprocess_agents = require_mfa): a hardware
// request says, before Approve is pressed and next to the code field, that it needs a code and
// why; with the authenticator's code it is approved and runs.
import { expect, test } from '@playwright/test';

import { ARTIFACTS, jobState, requestFrom, totp } from '../tests/helpers';

const EXTENSION = process.env.QGUARD_INPROCESS_EXTENSION ?? '';

test('a hardware request names the in-server agent by the code field', async ({ page }) => {
  const secret = process.env.QGUARD_TOTP_SECRET ?? '';
  expect(secret).not.toBe('');
  expect(EXTENSION).not.toBe('');
  const { cell, id, item } = await requestFrom(page, 'inprocess.ipynb');

  const note = item.locator('.jp-QGuard-mfa');
  await expect(note).toContainText('Approving needs a code from your authenticator app');
  await expect(note).toContainText(`in-server agent extension ${EXTENSION} is enabled`);
  await page.screenshot({ path: `${ARTIFACTS}/panel-inprocess.png` });

  // Cancelling the code leaves the request as it was.
  await item.locator('.jp-QGuard-approve').click();
  const dialog = page.locator('.jp-Dialog');
  await expect(dialog).toContainText('needs a second factor');
  await expect(dialog).toContainText(`in-server agent extension ${EXTENSION} is enabled`);
  await expect(dialog).toContainText('QGuardApp.inprocess_agents = require_mfa');
  await page.screenshot({ path: `${ARTIFACTS}/dialog-inprocess.png` });
  await dialog.locator('.jp-mod-reject').click();
  await expect(page.locator('.jp-Dialog')).toHaveCount(0);
  expect(await jobState(page, id)).toBe('pending_approval');

  await item.locator('.jp-QGuard-approve').click();
  await page.locator('.jp-Dialog input').fill(totp(secret, Date.now()));
  await page.locator('.jp-Dialog .jp-mod-accept').click();
  await expect(item).toHaveCount(0, { timeout: 10_000 });
  await expect(cell.locator('.jp-OutputArea')).toContainText('counts', { timeout: 60_000 });
});
