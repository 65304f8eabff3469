// Removes what `tsc` wrote, so a production build never ships a module whose source is gone.
// (The builder empties its own output directory itself.)
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
for (const entry of ['lib', 'tsconfig.tsbuildinfo']) {
  fs.rmSync(path.join(root, entry), { recursive: true, force: true });
}
