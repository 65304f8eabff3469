// Requests that change under the approver: a bound file edited while the request is open voids
// it; a step-up request asks for the TOTP code and refuses a wrong one.
import { expect, test } from '@playwright/test';

import { ARTIFACTS, TOKEN, jobState, openPanel, requestFrom, totp } from './helpers';

test('a bound file edited while the request is open voids it', async ({ page }) => {
  const { panel, cell, id, item } = await requestFrom(page, 'voided.ipynb');
  const reply = await page.request.get(`/qguard/api/jobs/${id}?token=${TOKEN}`);
  const { digest } = (await reply.json()) as { digest: string };

  // Edit the notebook the request is bound to, and save it.
  const last = page.locator('.jp-Notebook .jp-Cell').last();
  await last.locator('.cm-content').click();
  await page.keyboard.type('# edited while the request was open');
  await page.keyboard.press('Control+s');

  await expect(item).toHaveAttribute('data-state', 'voided', {
    timeout: 20_000
  });
  await expect(item.locator('.jp-QGuard-ended')).toContainText(
    'voided.ipynb changed after the request'
  );
  await expect(item.locator('.jp-QGuard-approve')).toBeDisabled();
  await expect(item.locator('.jp-QGuard-deny')).toBeDisabled();
  await expect(panel.locator('.jp-QGuard-count')).toHaveText('0');
  // Approving with the digest that was shown is refused by the server too.
  const approve = await page.request.post(`/qguard/api/jobs/${id}/approve?token=${TOKEN}`, {
    data: { digest }
  });
  expect(approve.status()).toBe(409);
  expect(await jobState(page, id)).toBe('voided');
  await expect(cell.locator('.jp-OutputArea')).toContainText('voided', {
    timeout: 30_000
  });
  await item.locator('.jp-QGuard-dismiss').click();
  await expect(item).toHaveCount(0);
});

test('a step-up request asks for the TOTP code and refuses a wrong one', async ({ page }) => {
  const secret = process.env.QGUARD_TOTP_SECRET ?? '';
  expect(secret).not.toBe('');
  const { cell, id, item } = await requestFrom(page, 'stepup.ipynb');

  // A code no authenticator shows now (none of the steps the server accepts).
  const now = Date.now();
  const valid = [-1, 0, 1].map(k => totp(secret, now + k * 30_000));
  const wrong = ['000000', '111111', '222222', '333333'].find(c => !valid.includes(c))!;

  await item.locator('.jp-QGuard-approve').click();
  const dialog = page.locator('.jp-Dialog');
  await expect(dialog).toContainText('needs a second factor');
  await dialog.locator('input').fill(wrong);
  await dialog.locator('.jp-mod-accept').click();
  await expect(page.locator('.jp-Dialog')).toContainText('the MFA code is wrong or has expired');
  await page.locator('.jp-Dialog').getByRole('button', { name: 'Close' }).click();
  await expect(item).toHaveAttribute('data-state', 'pending_approval');
  expect(await jobState(page, id)).toBe('pending_approval');

  await item.locator('.jp-QGuard-approve').click();
  await expect(page.locator('.jp-Dialog')).toContainText('needs a second factor');
  await page.locator('.jp-Dialog input').fill(totp(secret, Date.now()));
  await page.locator('.jp-Dialog .jp-mod-accept').click();
  await expect(item).toHaveCount(0, { timeout: 10_000 });
  await expect(cell.locator('.jp-OutputArea')).toContainText('counts', {
    timeout: 60_000
  });
});

test('the panel says which agent asked', async ({ page }) => {
  const agent = process.env.QGUARD_AGENT_TOKEN ?? '';
  expect(agent).toMatch(/^qga_/);
  await page.goto(`/lab/workspaces/agent?reset&token=${TOKEN}`);
  const panel = await openPanel(page);
  // The agent, from outside with its own token: its notebook, a session, then a cell over the
  // kernel websocket (the browser's WebSocket, with the token in the URL as clients may do).
  const headers = { Authorization: `token ${agent}` };
  const notebook = { cells: [], metadata: {}, nbformat: 4, nbformat_minor: 5 };
  const put = await page.request.put('/api/contents/agentwork.ipynb', {
    headers,
    data: { type: 'notebook', format: 'json', content: notebook }
  });
  expect(put.status()).toBe(201);
  const made = await page.request.post('/api/sessions', {
    headers,
    data: {
      path: 'agentwork.ipynb',
      type: 'notebook',
      name: 'agentwork.ipynb',
      kernel: { name: 'qguard-agent' }
    }
  });
  expect(made.status()).toBe(201);
  const kernelId = ((await made.json()) as { kernel: { id: string } }).kernel.id;
  const code =
    'from qiskit import QuantumCircuit\n' +
    'bell = QuantumCircuit(2); bell.h(0); bell.cx(0, 1); bell.measure_all()\n' +
    'job = %qguard submit bell --backend aer_hw --shots 100\n';
  const reply = await page.evaluate(
    ({ kernelId, agent, code }) =>
      new Promise<string>((resolve, reject) => {
        const url = `ws://${location.host}/api/kernels/${kernelId}/channels?token=${agent}`;
        const ws = new WebSocket(url);
        const session = crypto.randomUUID();
        const message = (type: string, content: object) => ({
          header: {
            msg_id: crypto.randomUUID(),
            msg_type: type,
            session,
            username: 'bot',
            version: '5.3',
            date: ''
          },
          parent_header: {},
          metadata: {},
          content,
          channel: 'shell',
          buffers: []
        });
        const run = message('execute_request', {
          code,
          silent: false,
          store_history: false,
          user_expressions: {},
          allow_stdin: false,
          stop_on_error: true
        });
        const ask = () => ws.send(JSON.stringify(message('kernel_info_request', {})));
        let timer = 0;
        ws.onopen = () => {
          ask();
          timer = window.setInterval(ask, 2000);
        };
        ws.onerror = () => reject(new Error('the kernel websocket failed'));
        ws.onmessage = event => {
          const msg = JSON.parse(event.data as string);
          if (msg.header.msg_type === 'kernel_info_reply' && timer) {
            window.clearInterval(timer);
            timer = 0;
            ws.send(JSON.stringify(run));
          } else if (
            msg.header.msg_type === 'execute_reply' &&
            msg.parent_header.msg_id === run.header.msg_id
          ) {
            ws.close();
            resolve(msg.content.status as string);
          }
        };
      }),
    { kernelId, agent, code }
  );
  expect(reply).toBe('ok');
  const item = panel.locator('.jp-QGuard-job').filter({ hasText: 'agentwork.ipynb' });
  await expect(item).toHaveCount(1, { timeout: 10_000 });
  await expect(item).toContainText(/bot \(agent of \S+\)/);
  await page.screenshot({ path: `${ARTIFACTS}/panel-agent.png` });
  await item.locator('.jp-QGuard-deny').click();
  await page.locator('.jp-Dialog input').fill('only checking who asked');
  await page.locator('.jp-Dialog .jp-mod-accept').click();
  await expect(item).toHaveCount(0, { timeout: 10_000 });
});
