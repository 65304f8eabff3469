// Browser tests of the approval panel. tests/test_ui.py starts the Jupyter server (with the guard,
// agent kernels and a workspace) and runs these with QGUARD_URL and QGUARD_TOKEN set; Debian's
// chromium is used as it is (no browser download).
import { defineConfig } from '@playwright/test';

export default defineConfig({
  testDir: './tests',
  timeout: 180_000,
  workers: 1,
  reporter: [['list']],
  // A folder of its own: Playwright empties it at the start of a run, and the screenshots and
  // the run's log (written by tests/test_ui.py) sit next to it.
  outputDir: `${process.env.QGUARD_ARTIFACTS ?? 'test-results'}/results`,
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
