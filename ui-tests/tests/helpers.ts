// What every browser test does: open a notebook in a fresh workspace, run a cell, open the panel.
import { createHmac } from 'crypto';

import { expect, type Locator, type Page } from '@playwright/test';

export const TOKEN = process.env.QGUARD_TOKEN ?? '';
export const ARTIFACTS = process.env.QGUARD_ARTIFACTS ?? 'test-results';

export async function openNotebook(
  page: Page,
  path: string,
  kernelName = 'Python 3 (qguard agent)'
): Promise<void> {
  // A workspace of its own, reset: JupyterLab would otherwise restore the previous test's tabs.
  const workspace = path.replace(/\W/g, '-');
  await page.goto(`/lab/workspaces/${workspace}/tree/${path}?reset&token=${TOKEN}`);
  // The notebook's kernel (from its metadata) is up when the status says idle.
  await expect(page.locator('.jp-NotebookPanel')).toBeVisible({
    timeout: 90_000
  });
  await expect(page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')).toBeVisible({
    timeout: 90_000
  });
  await expect(page.getByRole('button', { name: kernelName }).first()).toBeVisible();
}

/**
 * Run one cell (0-based); wait until it is running or has run (its prompt is not `[ ]`).
 * `advance` runs it as Shift+Enter does, which adds a cell after the last one: a change to the
 * notebook, and so to a request bound to it. Without, it runs as Ctrl+Enter does.
 */
export async function runCell(page: Page, index = 0, advance = true): Promise<Locator> {
  const cell = page.locator('.jp-CodeCell').nth(index);
  const prompt = cell.locator('.jp-InputPrompt');
  for (let attempt = 0; attempt < 20; attempt++) {
    await cell.locator('.jp-InputArea-prompt').click();
    if (advance) {
      await page
        .getByRole('button', {
          name: 'Run this cell and advance (Shift+Enter)'
        })
        .click();
    } else {
      await page.keyboard.press('Control+Enter');
    }
    try {
      await expect(prompt).not.toHaveText('[ ]:', { timeout: 3_000 });
      return cell;
    } catch {
      // The kernel said idle before its session was wired to the notebook: try again.
    }
  }
  throw new Error(`cell ${index} never ran`);
}

export async function openPanel(page: Page): Promise<Locator> {
  const tab = page.locator('.jp-SideBar .lm-TabBar-tab[title="Quantum job approvals"]');
  await tab.click();
  return page.locator('#jupyter-qguard-approvals');
}

/** The job the agent's cell printed ("job <id>"). */
export async function jobIdOf(cell: Locator): Promise<string> {
  const output = cell.locator('.jp-OutputArea');
  await expect(output).toContainText(/job [0-9a-f]{32}/, { timeout: 60_000 });
  const text = (await output.textContent()) ?? '';
  return /job ([0-9a-f]{32})/.exec(text)![1]!;
}

/** A job as the REST API has it, read with the page's own token. */
export async function jobState(page: Page, id: string): Promise<string> {
  const reply = await page.request.get(`/qguard/api/jobs/${id}?token=${TOKEN}`);
  expect(reply.ok()).toBeTruthy();
  return ((await reply.json()) as { state: string }).state;
}

/**
 * Open a notebook whose first cell submits a job and waits, run it, and find the job in the
 * panel, pending. Returns the panel, the cell, the job's id and its item in the panel.
 */
export async function requestFrom(
  page: Page,
  path: string
): Promise<{ panel: Locator; cell: Locator; id: string; item: Locator }> {
  await openNotebook(page, path);
  const panel = await openPanel(page);
  const cell = await runCell(page, 0);
  const id = await jobIdOf(cell);
  const item = panel.locator(`.jp-QGuard-job[data-job-id="${id}"]`);
  await expect(item).toHaveAttribute('data-state', 'pending_approval', { timeout: 10_000 });
  return { panel, cell, id, item };
}

/** RFC 6238 with SHA-1, 30 s steps, 6 digits: what an authenticator app shows. */
export function totp(secret: string, at: number): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secret.replace(/=+$/, '').toUpperCase()) {
    bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  }
  const key: number[] = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) {
    key.push(parseInt(bits.slice(i, i + 8), 2));
  }
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 30_000)));
  const mac = createHmac('sha1', Buffer.from(key)).update(counter).digest();
  const offset = mac[mac.length - 1]! & 0xf;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, '0');
}
