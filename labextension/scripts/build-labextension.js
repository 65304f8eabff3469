// Builds the federated extension into `jupyterlab.outputDir` with @jupyterlab/builder, then puts
// install.json beside it (the builder empties that directory first, so it cannot live there).
//
// The builder needs a JupyterLab core package.json: the packages of the application the
// extension will load into, which decides what is shared and what is a singleton.
// `jupyter labextension build` finds it through jupyter_builder, which downloads
// @jupyterlab/core-meta at build time and so fails offline; and a PEP 517 build runs in an
// isolated environment, where `python3` may not import jupyterlab at all. So look, in order:
//   1. $JUPYTERLAB_CORE_PATH, a directory holding the core package.json (an explicit choice);
//   2. the staging directory of the jupyterlab that $PYTHON, python3 or python imports;
//   3. @jupyterlab/core-meta in node_modules (a devDependency, pinned by package-lock.json).
//
// Usage: node scripts/build-labextension.js [--development]
'use strict';

const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');

const STAGING = [
  'import os, jupyterlab',
  'print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))'
].join('; ');

function isCore(dir) {
  return Boolean(dir) && fs.existsSync(path.join(dir, 'package.json'));
}

function fromPython() {
  const candidates = [process.env.PYTHON, 'python3', 'python'].filter(Boolean);
  for (const python of new Set(candidates)) {
    const run = spawnSync(python, ['-c', STAGING], { encoding: 'utf8' });
    const dir = run.status === 0 ? run.stdout.trim() : '';
    if (isCore(dir)) {
      return { dir, source: `the jupyterlab of ${python}` };
    }
  }
  return null;
}

function fromCoreMeta() {
  let meta;
  try {
    meta = path.join(
      path.dirname(require.resolve('@jupyterlab/core-meta/package.json', { paths: [root] })),
      'core.package.json'
    );
  } catch {
    return null;
  }
  if (!fs.existsSync(meta)) {
    return null;
  }
  // The builder reads `<core path>/package.json`; core-meta ships the same file under another
  // name, next to its own package.json.
  const dir = path.join(root, 'node_modules', '.cache', 'jupyter-qguard-core');
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(meta, path.join(dir, 'package.json'));
  const { version } = require(path.join(path.dirname(meta), 'package.json'));
  return { dir, source: `@jupyterlab/core-meta ${version}` };
}

function findCore() {
  const explicit = process.env.JUPYTERLAB_CORE_PATH;
  if (explicit) {
    if (!isCore(explicit)) {
      throw new Error(`JUPYTERLAB_CORE_PATH=${explicit} has no package.json`);
    }
    return { dir: explicit, source: 'JUPYTERLAB_CORE_PATH' };
  }
  const core = fromPython() || fromCoreMeta();
  if (!core) {
    throw new Error(
      'no JupyterLab core package.json: set JUPYTERLAB_CORE_PATH, make jupyterlab ' +
        'importable from $PYTHON, or run `npm ci` to install @jupyterlab/core-meta'
    );
  }
  return core;
}

function main() {
  const core = findCore();
  console.log(`jupyter-qguard: building against ${core.dir} (${core.source})`);

  const builder = require.resolve('@jupyterlab/builder/lib/build-labextension.js', {
    paths: [root]
  });
  const args = [builder, '--core-path', path.resolve(core.dir), ...process.argv.slice(2), '.'];
  const run = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
  if (run.status !== 0) {
    process.exit(run.status === null ? 1 : run.status);
  }

  const pkg = require(path.join(root, 'package.json'));
  const outputDir = path.resolve(root, pkg.jupyterlab.outputDir);
  fs.copyFileSync(path.join(root, 'install.json'), path.join(outputDir, 'install.json'));
}

try {
  main();
} catch (err) {
  console.error(`jupyter-qguard: ${err.message}`);
  process.exit(1);
}
