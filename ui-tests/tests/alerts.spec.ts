// An alert reaches the person at once, whatever is open: an agent kernel writes conftest.py
// (code pytest imports when the person runs the tests) and a toast says so, with the path.
import { expect, test } from '@playwright/test';

import { ARTIFACTS, openNotebook, runCell } from './helpers';

test('an alert the server raises is shown as a toast', async ({ page }) => {
  await openNotebook(page, 'alerts.ipynb');
  const cell = await runCell(page, 0, false);
  await expect(cell.locator('.jp-OutputArea')).toContainText('written', { timeout: 60_000 });
  const toast = page.locator('.Toastify__toast', { hasText: 'qguard: ' });
  await expect(toast).toContainText('conftest.py', { timeout: 30_000 });
  await expect(toast).toContainText('pytest');
  await page.screenshot({ path: `${ARTIFACTS}/alert-toast.png` });
});
