/**
 * The panel's Kernels: each agent kernel the broker runs, the notebook or console it serves, and
 * the sandbox layers its launcher applied before any agent code ran (with why a layer is off).
 * Read from the server (GET qguard/api/sandbox), never from kernelspec names.
 */

import { Session } from '@jupyterlab/services';

import { IKernelReport, QGuardClient } from './api';
import { basename, code, element, messageOf, short } from './dom';

/** What the view needs of JupyterLab's session manager: kernel id → notebook path. */
export interface ISessions {
  running(): IterableIterator<Session.IModel>;
}

export class KernelsView {
  constructor(
    private readonly _client: QGuardClient,
    private readonly _sessions: ISessions | null
  ) {
    this.node = element('div', 'jp-QGuard-kernels');
    this._message = element('p', 'jp-QGuard-message', 'Loading…');
    this._message.setAttribute('role', 'status');
    this._list = element('ul', 'jp-QGuard-list jp-QGuard-kernelList');
    this._list.setAttribute('aria-label', 'Agent kernels and their sandbox');
    this.node.append(this._message, this._list);
  }

  readonly node: HTMLDivElement;

  async refresh(): Promise<void> {
    const generation = ++this._generation;
    try {
      const kernels = await this._client.kernels();
      if (generation !== this._generation) {
        return;
      }
      const paths = new Map<string, string>();
      for (const session of this._sessions?.running() ?? []) {
        if (session.kernel) {
          paths.set(session.kernel.id, session.path);
        }
      }
      this._list.replaceChildren(...kernels.map(k => kernelItem(k, paths.get(k.kernel_id))));
      this._message.textContent = kernels.length ? '' : 'No agent kernel is running.';
      delete this._message.dataset.kind;
    } catch (err) {
      if (generation === this._generation) {
        this._message.textContent = `The kernels could not be read: ${messageOf(err)}`;
        this._message.dataset.kind = 'error';
      }
    }
  }

  private readonly _message: HTMLParagraphElement;
  private readonly _list: HTMLUListElement;
  private _generation = 0;
}

function kernelItem(kernel: IKernelReport, path: string | undefined): HTMLLIElement {
  const item = element('li', 'jp-QGuard-kernel');
  item.dataset.kernelId = kernel.kernel_id;
  const sandbox = kernel.sandbox ?? {};
  const applied = Object.entries(sandbox.applied ?? {}).sort(([a], [b]) => a.localeCompare(b));
  const off = applied.filter(([, layer]) => !layer.active);
  const status =
    sandbox.ok === undefined
      ? 'starting'
      : sandbox.ok && off.length === 0
        ? 'all layers on'
        : sandbox.ok
          ? `${off.length} layer${off.length === 1 ? '' : 's'} off`
          : 'sandbox incomplete';
  item.dataset.sandbox = sandbox.ok === undefined ? 'starting' : sandbox.ok ? 'ok' : 'failed';
  const name = path ? basename(path) : `kernel ${short(kernel.kernel_id, 8)}`;
  item.setAttribute('aria-label', `${name}: ${status}`);

  const top = element('div', 'jp-QGuard-jobTop');
  top.append(
    element('span', 'jp-QGuard-backend', name),
    element('span', 'jp-QGuard-state', status)
  );
  const id = element('div', 'jp-QGuard-kernelId');
  id.append(code(short(kernel.kernel_id, 8)));
  id.title = kernel.kernel_id + (path ? ` (${path})` : '');
  if (!kernel.connected) {
    id.append(' · not connected to the broker');
  }

  const layers = element('ul', 'jp-QGuard-layers');
  layers.setAttribute('aria-label', 'Sandbox layers');
  for (const [layerName, layer] of applied) {
    const li = element('li');
    li.dataset.layer = layerName;
    li.dataset.active = String(!!layer.active);
    // The mark is decoration; screen readers get "on" or "off" in words.
    const mark = element('span', 'jp-QGuard-layerMark', layer.active ? '✓' : '✗');
    mark.setAttribute('aria-hidden', 'true');
    li.append(mark, ` ${layerName} ${layer.active ? 'on' : 'off'}`);
    if (!layer.active && layer.why) {
      li.append(element('span', 'jp-QGuard-why', `: ${layer.why}`));
    }
    layers.append(li);
  }
  item.append(top, id, layers);
  if (sandbox.last_end?.reason) {
    // A kernel that died on its own was restarted: say why (JupyterLab only says it died).
    const ended = element('p', 'jp-QGuard-lastEnd', `Last restart: ${sandbox.last_end.reason}`);
    ended.setAttribute('role', 'status');
    item.append(ended);
  }
  return item;
}
