// Browser tests of the approval panel. tests/test_ui.py starts the Jupyter server (with the guard,
// agent kernels and a workspace) and runs these with QGUARD_URL and QGUARD_TOKEN set; Debian's
// chromium is used as it is (no browser download).
import { defineConfig } from '@playwright/test';

export default defineConfig({
  testDir: './tests',
  timeout: 180_000,
  workers: 1,
  reporter: [['list']],
  outputDir: process.env.QGUARD_ARTIFACTS ?? 'test-results',
  use: {
    baseURL: process.env.QGUARD_URL,
    viewport: { width: 1280, height: 800 },
    launchOptions: {
      executablePath: process.env.QGUARD_CHROMIUM ?? '/usr/bin/chromium',
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run'
      ]
    }
  }
});
