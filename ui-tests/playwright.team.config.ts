// Team mode in a real browser: tests/team/test_team_ui.py starts JupyterHub with qguard's broker
// as its service, spawns the users' servers, and runs these with QGUARD_HUB_URL set.
import { defineConfig } from '@playwright/test';

import base from './playwright.config';

export default defineConfig({
  ...base,
  testDir: './team',
  use: { ...base.use, baseURL: process.env.QGUARD_HUB_URL }
});
