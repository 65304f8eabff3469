// An agent's hardware job in a notebook: it appears in the panel within a second, a person
// approves it there, and the notebook's waiting cell prints the counts.
import { expect, test, type Page } from '@playwright/test';

const TOKEN = process.env.QGUARD_TOKEN ?? '';
const ARTIFACTS = process.env.QGUARD_ARTIFACTS ?? 'test-results';

async function openNotebook(page: Page, path: string): Promise<void> {
  // A workspace of its own, reset: JupyterLab would otherwise restore the previous test's tabs.
  const workspace = path.replace(/\W/g, '-');
  await page.goto(`/lab/workspaces/${workspace}/tree/${path}?reset&token=${TOKEN}`);
  // The notebook's kernel (qguard-agent, from its metadata) is up when the status says idle.
  await expect(page.locator('.jp-NotebookPanel')).toBeVisible({ timeout: 90_000 });
  await expect(page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')).toBeVisible({
    timeout: 90_000
  });
  await expect(page.getByRole('button', { name: 'Python 3 (qguard agent)' }).first()).toBeVisible();
}

/** Run the first cell; wait until it is running (its prompt shows `[*]`). */
async function runFirstCell(page: Page): Promise<void> {
  const cell = page.locator('.jp-CodeCell').first();
  const prompt = cell.locator('.jp-InputPrompt');
  for (let attempt = 0; attempt < 20; attempt++) {
    await cell.locator('.jp-InputArea-prompt').click();
    await page.getByRole('button', { name: 'Run this cell and advance (Shift+Enter)' }).click();
    try {
      await expect(prompt).not.toHaveText('[ ]:', { timeout: 3_000 });
      return;
    } catch {
      // The kernel said idle before its session was wired to the notebook: try again.
    }
  }
  throw new Error('the cell never ran');
}

async function openPanel(page: Page) {
  const tab = page.locator('.jp-SideBar .lm-TabBar-tab[title="Quantum job approvals"]');
  await tab.click();
  return page.locator('#jupyter-qguard-approvals');
}

test('a job is approved in the panel and the waiting cell prints the counts', async ({ page }) => {
  await openNotebook(page, 'approve.ipynb');
  const panel = await openPanel(page);
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(0);
  const cell = page.locator('.jp-CodeCell').first();
  await runFirstCell(page);
  // The magic prints the job's status line as soon as the broker has the request.
  const output = cell.locator('.jp-OutputArea-output');
  await expect(output.first()).toContainText('qguard job', { timeout: 60_000 });
  const submittedAt = Date.now();
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(1, { timeout: 5_000 });
  expect(Date.now() - submittedAt).toBeLessThan(1_000);
  // The review: the circuit as drawn by Qiskit, and the noisy preflight run as a histogram.
  const job = panel.locator('.jp-QGuard-job').first();
  await job.locator('.jp-QGuard-review summary').click();
  await expect(job.locator('.jp-QGuard-drawing')).toContainText('┤ H ├', { timeout: 10_000 });
  await expect(job.locator('.jp-QGuard-histogram tr[data-outcome="00"]')).toBeVisible();
  await expect(job.locator('.jp-QGuard-histogram tr[data-outcome="11"]')).toBeVisible();
  await expect(job.locator('.jp-QGuard-budget')).toContainText('this job: 0.00 USD');
  await expect(job.locator('.jp-QGuard-file').first()).toContainText('approve.ipynb');
  await page.screenshot({ path: `${ARTIFACTS}/panel-pending-light.png` });
  await panel.locator('.jp-QGuard-approve').first().click();
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(0, { timeout: 10_000 });
  await expect(cell.locator('.jp-OutputArea')).toContainText("'00'", { timeout: 60_000 });
  await expect(cell.locator('.jp-OutputArea')).toContainText('counts', { timeout: 5_000 });
});

test('a job denied in the panel ends the waiting cell with the reason', async ({ page }) => {
  await openNotebook(page, 'deny.ipynb');
  const panel = await openPanel(page);
  const cell = page.locator('.jp-CodeCell').first();
  await runFirstCell(page);
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(1, { timeout: 60_000 });
  await panel.locator('.jp-QGuard-deny').first().click();
  const dialog = page.locator('.jp-Dialog');
  await expect(dialog).toBeVisible();
  await dialog.locator('input').fill('too many shots for a first run');
  await dialog.locator('.jp-mod-accept').click();
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(0, { timeout: 10_000 });
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
  await runFirstCell(page);
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(1, { timeout: 60_000 });
  await expect(page.locator('body')).toHaveAttribute('data-jp-theme-light', 'false');
  // The theme's CSS arrives after the attribute: wait until the top bar and the panel's own
  // header are drawn dark (both carry an opaque background).
  const brightness = (selector: string) =>
    page.locator(selector).first().evaluate(node => {
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
  await expect(panel.locator('.jp-QGuard-job')).toHaveCount(0, { timeout: 10_000 });
});
