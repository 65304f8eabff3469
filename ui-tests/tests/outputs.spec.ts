// Agent outputs never run script. An agent's cell shows JavaScript, HTML with <script> and
// onerror, SVG with script and onload, and Markdown with raw HTML, each trying to set a global
// and to approve every pending job with the user's cookie: nothing runs, nothing is approved.
// The same cell in an ordinary kernel then runs and does approve, so the test can fail.
import { expect, test, type Page } from '@playwright/test';

import { TOKEN, jobIdOf, jobState, openNotebook, runCell } from './helpers';

const ran = (page: Page) =>
  page.evaluate(() => (window as unknown as { qguardRan?: string[] }).qguardRan ?? []);

test('outputs of an agent kernel run no script and approve nothing', async ({ page }) => {
  await openNotebook(page, 'outputs.ipynb');
  const id = await jobIdOf(await runCell(page, 0));
  expect(await jobState(page, id)).toBe('pending_approval');

  // Not Shift+Enter: a cell added to the notebook would void the request (it is bound to it).
  const cell = await runCell(page, 1, false);
  const out = cell.locator('.jp-OutputArea');
  await expect(out).toContainText('payloads shown', { timeout: 60_000 });
  // The server said this is an agent kernel: the notebook is guarded.
  await expect(page.locator('.jp-NotebookPanel[data-qguard-agent-outputs="true"]')).toHaveCount(1);
  // HTML and Markdown are drawn, sanitized. JavaScript and SVG have no renderer here (both
  // can run script): the text the kernel sent with them is shown instead.
  await expect(out.locator('b', { hasText: 'html' })).toBeVisible();
  await expect(out.locator('strong', { hasText: 'markdown' })).toBeVisible();
  await expect(out).toContainText('<IPython.core.display.Javascript object>');
  await expect(out).toContainText('<IPython.core.display.SVG object>');
  await expect(out.locator('.jp-RenderedJavaScript, .jp-RenderedSVG')).toHaveCount(0);
  const trustMe = out.locator('button', { hasText: 'trust me' });
  await expect(trustMe).toBeVisible();
  await expect(trustMe).not.toHaveAttribute('data-commandlinker-command', /.*/);
  await expect(out.locator('script')).toHaveCount(0);
  await expect(out.locator('[onerror], [onload]')).toHaveCount(0);
  await expect(page.locator('.jp-OutputArea-output.jp-mod-trusted')).toHaveCount(0);
  // Give a handler every chance to fire (images load, a fetch returns) before looking.
  await page.waitForTimeout(3_000);
  expect(await ran(page)).toEqual([]);
  expect(await jobState(page, id)).toBe('pending_approval');

  // "Trust Notebook" from the command palette: the cells are trusted, and at once not again.
  await page.keyboard.press('Control+Shift+C');
  await page.locator('.lm-CommandPalette-input').fill('Trust Notebook');
  await page.keyboard.press('Enter');
  const dialog = page.locator('.jp-Dialog');
  await expect(dialog).toBeVisible();
  await dialog.getByRole('button', { name: 'Trust' }).click();
  await expect(page.locator('.jp-Notification-Toast-warning')).toContainText(
    'always shown untrusted',
    { timeout: 10_000 }
  );
  await page.waitForTimeout(2_000);
  await expect(page.locator('.jp-OutputArea-output.jp-mod-trusted')).toHaveCount(0);
  expect(await ran(page)).toEqual([]);
  expect(await jobState(page, id)).toBe('pending_approval');

  // The control: the same cell in an ordinary python3 kernel runs its script and approves.
  await openNotebook(page, 'control.ipynb', 'Python 3 (ipykernel)');
  await expect(page.locator('.jp-NotebookPanel[data-qguard-agent-outputs]')).toHaveCount(0);
  const control = await runCell(page, 0);
  await expect(control.locator('.jp-OutputArea')).toContainText('payloads shown', {
    timeout: 60_000
  });
  await expect.poll(() => ran(page), { timeout: 15_000 }).toContain('javascript');
  expect(await ran(page)).toContain('html-onerror');
  await expect.poll(() => jobState(page, id), { timeout: 15_000 }).not.toBe('pending_approval');
});

test('a console on an agent kernel runs no script either', async ({ page }) => {
  await page.goto(`/lab/workspaces/console?reset&token=${TOKEN}`);
  // The launcher's console card for the agent kernelspec.
  await page
    .locator(
      '.jp-Launcher-section:has-text("Console") .jp-LauncherCard[title="Python 3 (qguard agent)"]'
    )
    .click();
  const panel = page.locator('.jp-ConsolePanel');
  await expect(panel).toHaveAttribute('data-qguard-agent-outputs', 'true', {
    timeout: 90_000
  });
  const prompt = panel.locator('.jp-CodeConsole-promptCell .cm-content');
  await prompt.click();
  await page.keyboard.insertText(
    'from IPython.display import HTML, Javascript, display\n' +
      'display(Javascript("window.qguardRan = [\'console-js\']"))\n' +
      'display(HTML(\'<i>console html</i><img src="data:," onerror="window.qguardRan = [\\\'console-onerror\\\']">\'))'
  );
  await page.keyboard.press('Shift+Enter');
  const out = panel.locator('.jp-CodeConsole-content .jp-OutputArea');
  await expect(out.locator('i', { hasText: 'console html' })).toBeVisible({
    timeout: 60_000
  });
  await expect(out).toContainText('<IPython.core.display.Javascript object>');
  await expect(out.locator('[onerror]')).toHaveCount(0);
  await page.waitForTimeout(2_000);
  expect(await ran(page)).toEqual([]);
});
