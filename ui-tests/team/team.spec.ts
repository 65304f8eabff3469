// An approver on JupyterHub: bob signs in to the hub, his lab panel lists alice's premium
// request in the team queue with a link instead of Approve/Deny, and the link takes him (through
// the hub's OAuth) to the broker service's page, where he approves with his MFA code.
import { expect, test } from '@playwright/test';

import { ARTIFACTS, openPanel, totp } from '../tests/helpers';

const JOB = process.env.QGUARD_JOB_ID ?? '';
const SECRET = process.env.QGUARD_TOTP_SECRET ?? '';

test('an approver sees the team queue and decides on the service page', async ({
  page,
  context
}) => {
  await page.goto('/hub/login');
  await page.locator('#username_input').fill('bob');
  await page.locator('#password_input').fill('any password will do');
  await page.locator('#login_submit').click();
  await page.waitForURL(/\/hub\/(home|spawn|spawn-pending)|\/user\/bob\//);
  await page.goto('/user/bob/lab');
  const panel = await openPanel(page);

  const item = panel.locator(`li.jp-QGuard-job[data-job-id="${JOB}"]`);
  await expect(item).toBeVisible({ timeout: 60_000 });
  await expect(panel.locator('.jp-QGuard-teamCaption')).toBeVisible();
  await expect(item).toContainText('alice');
  // Decided on the service's page, not here: no Approve or Deny button, a link instead.
  await expect(item.locator('.jp-QGuard-approve, .jp-QGuard-deny')).toHaveCount(0);
  const link = item.locator('a.jp-qguard-approve-link');
  await expect(link).toHaveAttribute('href', `/services/qguard/jobs/${JOB}`);
  await expect(link).toHaveAttribute('target', '_blank');
  await page.screenshot({ path: `${ARTIFACTS}/panel-team.png` });

  const [review] = await Promise.all([context.waitForEvent('page'), link.click()]);
  // The hub's OAuth (the service is a trusted client: no consent page), then the job.
  await expect(review.getByRole('heading', { level: 1 })).toHaveText(
    `Job ${JOB.slice(0, 8)} — pending_approval`,
    { timeout: 60_000 }
  );
  await expect(review).toHaveURL(new RegExp(`/services/qguard/jobs/${JOB}$`));
  await expect(review.locator('script')).toHaveCount(0);
  await expect(review.locator('body')).toContainText('alice');
  await expect(review.locator('body')).toContainText('0 of 2');
  await review.screenshot({ path: `${ARTIFACTS}/service-job.png`, fullPage: true });

  await review.locator("input[name='otp']").fill(totp(SECRET, Date.now()));
  await review.getByRole('button', { name: 'Approve' }).click();
  await expect(review.locator('.notice')).toHaveText(
    'approval recorded; the job is pending_approval'
  );
  await expect(review.locator('body')).toContainText('1 of 2: bob');
});
