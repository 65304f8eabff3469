// In-server agent extensions in a real browser: tests/agents/test_inprocess_agents.py starts a
// server with a stand-in agent extension enabled and runs these with QGUARD_URL set.
import { defineConfig } from '@playwright/test';

import base from './playwright.config';

export default defineConfig({
  ...base,
  testDir: './inprocess'
});
