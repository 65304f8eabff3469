// An agent's hardware job in a notebook: it appears in the panel within a second, a person
// approves it there, and the notebook's waiting cell prints the counts.
import { expect, test } from '@playwright/test';

import { ARTIFACTS, TOKEN, openNotebook, openPanel, runCell } from './helpers';

test('a job is approved in the panel and the waiting cell prints the counts', async ({ page }) => {
  await openNotebook(page, 'approve.ipynb');
  const panel = await openPanel(page);
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(0);
  const cell = page.locator('.jp-CodeCell').first();
  await runCell(page);
  // The magic prints the job's status line as soon as the broker has the request.
  const output = cell.locator('.jp-OutputArea-output');
  await expect(output.first()).toContainText('qguard job', { timeout: 60_000 });
  const submittedAt = Date.now();
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(1, {
    timeout: 5_000
  });
  expect(Date.now() - submittedAt).toBeLessThan(1_000);
  // The review: the circuit as drawn by Qiskit, and the noisy preflight run as a histogram.
  const job = panel.locator('.jp-QGuard-job').first();
  await job.locator('.jp-QGuard-review summary').click();
  await expect(job.locator('.jp-QGuard-drawing')).toContainText('┤ H ├', {
    timeout: 10_000
  });
  // The drawing is of the circuit as it will run; the source is the kernel's word, said so.
  await expect(job.locator('.jp-QGuard-reviewHeading').filter({ hasText: 'Circuit' })).toHaveText(
    'Circuit as it will run (transpiled for aer)'
  );
  await expect(job.locator('.jp-QGuard-reviewHeading').filter({ hasText: 'Source' })).toHaveText(
    "Source (qpy): the kernel's own description, unverified"
  );
  await expect(job.locator('.jp-QGuard-sourceNote')).toContainText('unverified');
  await expect(job.locator('.jp-QGuard-source')).toContainText('bell.cx(0, 1)');
  await expect(job.locator('.jp-QGuard-histogram tr[data-outcome="00"]')).toBeVisible();
  await expect(job.locator('.jp-QGuard-histogram tr[data-outcome="11"]')).toBeVisible();
  await expect(job.locator('.jp-QGuard-budget')).toContainText('this job: 0.00 USD');
  await expect(job.locator('.jp-QGuard-file').first()).toContainText('approve.ipynb');
  await page.screenshot({ path: `${ARTIFACTS}/panel-pending-light.png` });
  await panel.locator('.jp-QGuard-approve').first().click();
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(0, {
    timeout: 10_000
  });
  await expect(cell.locator('.jp-OutputArea')).toContainText("'00'", {
    timeout: 60_000
  });
  await expect(cell.locator('.jp-OutputArea')).toContainText('counts', {
    timeout: 5_000
  });
});

test('history with filters and the kernels, by keyboard', async ({ page }) => {
  // approve.ipynb's kernel still runs, and its job completed in the test above.
  await openNotebook(page, 'approve.ipynb');
  const panel = await openPanel(page);
  const pending = panel.getByRole('tab', { name: /^Pending/ });
  await expect(pending).toHaveAttribute('aria-selected', 'true');
  await pending.focus();
  await page.keyboard.press('ArrowRight');
  const historyTab = panel.getByRole('tab', { name: 'History' });
  await expect(historyTab).toBeFocused();
  await expect(historyTab).toHaveAttribute('aria-selected', 'true');
  const history = panel.getByRole('tabpanel', { name: 'History' });
  const rows = history.locator('.jp-QGuard-historyItem');
  await expect(rows.first()).toBeVisible({ timeout: 10_000 });

  await history.getByLabel('State').selectOption('completed');
  await expect(rows.first()).toHaveAttribute('data-state', 'completed');
  expect(
    new Set(await rows.evaluateAll(items => items.map(i => i.getAttribute('data-state'))))
  ).toEqual(new Set(['completed']));
  await history.getByLabel('Backend').fill('aer_hw');
  await history.getByLabel('Backend').press('Enter');
  await expect(rows.first()).toContainText('aer_hw');
  await history.getByLabel('Requested by').fill('nobody-at-all');
  await expect(rows).toHaveCount(0, { timeout: 5_000 });
  await expect(history).toContainText('No job matches these filters.');
  await history.getByLabel('Requested by').fill('');
  await expect(rows.first()).toBeVisible({ timeout: 5_000 });
  // Open a row with the keyboard: how the job moved, who approved it, its result.
  await rows.first().locator('summary').focus();
  await page.keyboard.press('Enter');
  const moves = rows.first().locator('.jp-QGuard-moves');
  await expect(moves).toContainText('pending approval → approved');
  await expect(moves).toContainText('submitted → completed');
  await expect(rows.first()).toContainText('Result');
  await page.screenshot({ path: `${ARTIFACTS}/panel-history.png` });

  await historyTab.focus();
  await page.keyboard.press('ArrowRight');
  const kernelsTab = panel.getByRole('tab', { name: 'Kernels' });
  await expect(kernelsTab).toBeFocused();
  const kernels = panel.getByRole('tabpanel', { name: 'Kernels' });
  const kernel = kernels.locator('.jp-QGuard-kernel').filter({ hasText: 'approve.ipynb' });
  await expect(kernel).toBeVisible({ timeout: 10_000 });
  await expect(kernel.locator('li[data-layer="landlock"]')).toHaveAttribute('data-active', 'true');
  await expect(kernel.locator('li[data-layer="landlock"]')).toContainText('landlock on');
  await page.screenshot({ path: `${ARTIFACTS}/panel-kernels.png` });
  await page.keyboard.press('Home');
  await expect(pending).toBeFocused();
});

test('a job denied in the panel ends the waiting cell with the reason', async ({ page }) => {
  await openNotebook(page, 'deny.ipynb');
  const panel = await openPanel(page);
  const cell = page.locator('.jp-CodeCell').first();
  await runCell(page);
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(1, {
    timeout: 60_000
  });
  await panel.locator('.jp-QGuard-deny').first().click();
  const dialog = page.locator('.jp-Dialog');
  await expect(dialog).toBeVisible();
  await dialog.locator('input').fill('too many shots for a first run');
  await dialog.locator('.jp-mod-accept').click();
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(0, {
    timeout: 10_000
  });
  const out = cell.locator('.jp-OutputArea');
  await expect(out).toContainText('QGuardDenied', { timeout: 60_000 });
  await expect(out).toContainText('too many shots for a first run');
});

test('the panel with a pending request, in the dark theme', async ({ page }) => {
  // Switch the theme through the settings API (as the Settings menu does), then reload.
  const settings = '/lab/api/settings/@jupyterlab/apputils-extension:themes';
  const put = await page.request.put(`${settings}?token=${TOKEN}`, {
    data: { raw: JSON.stringify({ theme: 'JupyterLab Dark' }) }
  });
  expect(put.ok()).toBeTruthy();
  await openNotebook(page, 'dark.ipynb');
  const panel = await openPanel(page);
  await runCell(page);
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(1, {
    timeout: 60_000
  });
  await expect(page.locator('body')).toHaveAttribute('data-jp-theme-light', 'false');
  // The theme's CSS arrives after the attribute: wait until the top bar and the panel's own
  // header are drawn dark (both carry an opaque background).
  const brightness = (selector: string) =>
    page
      .locator(selector)
      .first()
      .evaluate(node => {
        const rgb = getComputedStyle(node).backgroundColor.match(/[\d.]+/g) ?? [];
        const [r, g, b, a] = rgb.map(Number);
        return a === 0 || rgb.length < 3 ? 765 : r + g + b;
      });
  await expect.poll(() => brightness('#jp-top-panel'), { timeout: 15_000 }).toBeLessThan(200);
  await expect.poll(() => brightness('.jp-SideBar'), { timeout: 15_000 }).toBeLessThan(200);
  await page.screenshot({ path: `${ARTIFACTS}/panel-pending-dark.png` });
  await panel.locator('.jp-QGuard-deny').first().click();
  await page.locator('.jp-Dialog input').fill('screenshot only');
  await page.locator('.jp-Dialog .jp-mod-accept').click();
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(0, {
    timeout: 10_000
  });
  // Back to the light theme for whatever runs next.
  await page.request.put(`${settings}?token=${TOKEN}`, {
    data: { raw: JSON.stringify({ theme: 'JupyterLab Light' }) }
  });
});
