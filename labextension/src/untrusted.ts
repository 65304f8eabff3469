/**
 * Agent outputs never run script.
 *
 * A notebook or console whose kernel the *server* reports as a qguard agent kernel (GET
 * qguard/api/kernels/{id}; a kernelspec name can be copied, so it is never the test) renders
 * every output untrusted, for as long as it is open:
 *
 * - its rendermime registry (each notebook and console has a clone of its own) loses every
 *   renderer that is not `safe`, JavaScript first, and any such renderer added later (widget
 *   managers add theirs per notebook) is refused;
 * - every remaining renderer is wrapped so that it renders its model as untrusted whatever the
 *   model says: HTML and Markdown go through the sanitizer, SVG is not drawn, and command links
 *   lose their attributes, so nothing in an output can run a JupyterLab command either;
 * - its cells are kept untrusted: JupyterLab marks a cell trusted when it runs it, and the
 *   "Trust Notebook" command marks them all; both are undone at once, and the notebook no longer
 *   names a trust command, so no "Trust" button is offered for its outputs.
 *
 * Until the server has answered for a new kernel, a trusted output waits for the answer before
 * it is drawn (an untrusted one is drawn at once: it is harmless either way). When the answer
 * cannot be had, the kernel is treated as an agent kernel. A notebook stays guarded after its
 * agent kernel is gone: the outputs it shows came from the agent.
 */

import { ISessionContext } from '@jupyterlab/apputils';
import { Cell, ICellModel } from '@jupyterlab/cells';
import { ConsolePanel } from '@jupyterlab/console';
import { NotebookPanel } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { IRenderMime } from '@jupyterlab/rendermime-interfaces';

import { QGuardClient } from './api';

type Verdict = 'agent' | 'plain';

/** Marks a guarded notebook or console in the DOM (styles, tests, and people debugging). */
export const GUARDED_ATTR = 'data-qguard-agent-outputs';

/** The attributes the sanitizer keeps on buttons so that a click runs a JupyterLab command. */
const COMMAND_LINK_ATTRS = ['data-commandlinker-command', 'data-commandlinker-args'];

export class AgentOutputGuard {
  constructor(private readonly _client: QGuardClient) {}

  /** Guards a notebook from its creation on (before its outputs are first drawn). */
  watchNotebook(panel: NotebookPanel): void {
    const notebook = panel.content;
    new GuardedView(this._client, panel.sessionContext, notebook.rendermime, panel.node, () => {
      notebook.node.removeAttribute('data-trust-command');
      const model = notebook.model;
      if (!model) {
        return;
      }
      for (const cell of model.cells) {
        keepUntrusted(cell);
      }
      model.cells.changed.connect((_, change) => change.newValues.forEach(keepUntrusted), panel);
    });
  }

  /** Guards a code console; its cells are widgets, and a new prompt cell comes with each run. */
  watchConsole(panel: ConsolePanel): void {
    const console_ = panel.console;
    new GuardedView(this._client, panel.sessionContext, console_.rendermime, panel.node, () => {
      const keep = (cell: Cell): void => keepUntrusted(cell.model);
      console_.cells.changed.connect((_, change) => change.newValues.forEach(keep), panel);
      for (const cell of console_.cells) {
        keep(cell);
      }
      if (console_.promptCell) {
        keep(console_.promptCell);
      }
      console_.promptCellCreated.connect((_, cell) => keep(cell), panel);
    });
  }
}

/** One notebook's or console's verdict, its wrapped renderers, and the lock once it is known. */
class GuardedView {
  constructor(
    private readonly _client: QGuardClient,
    private readonly _session: ISessionContext,
    private readonly _rendermime: IRenderMimeRegistry,
    private readonly _node: HTMLElement,
    private readonly _lockCells: () => void
  ) {
    this._wrapRegistry();
    this._verdict = this._session.ready.then(
      () => this._judge(),
      () => this._judge()
    );
    this._session.kernelChanged.connect(() => {
      // A new kernel: trusted outputs wait for what the server says of it.
      this._verdict = this._judge();
    });
  }

  /** Asks the server about the current kernel; an agent once is an agent for good. */
  private async _judge(): Promise<Verdict> {
    if (this._agent) {
      return 'agent';
    }
    const kernel = this._session.session?.kernel;
    if (!kernel) {
      return 'plain'; // No kernel, no new outputs: saved ones keep JupyterLab's own rules.
    }
    let agent: boolean;
    try {
      agent = await this._client.isAgentKernel(kernel.id);
    } catch (err) {
      console.warn(
        `jupyter-qguard: could not ask the server about kernel ${kernel.id}; ` +
          `its outputs are treated as an agent's: ${err}`
      );
      agent = true;
    }
    if (agent) {
      this._lock();
    }
    return this._agent ? 'agent' : 'plain';
  }

  private _lock(): void {
    if (this._agent) {
      return;
    }
    this._agent = true;
    this._node.setAttribute(GUARDED_ATTR, 'true');
    for (const mimeType of [...this._rendermime.mimeTypes]) {
      if (!this._rendermime.getFactory(mimeType)?.safe) {
        this._rendermime.removeMimeType(mimeType);
      }
    }
    this._lockCells();
  }

  /** Wraps every renderer now in the registry, and every one added later. */
  private _wrapRegistry(): void {
    const registry = this._rendermime;
    for (const mimeType of [...registry.mimeTypes]) {
      const factory = registry.getFactory(mimeType);
      if (factory) {
        registry.addFactory(this._wrap(factory), registry.getRank(mimeType));
      }
    }
    // Widget managers and other extensions add renderers to a notebook's registry after it is
    // made. The registry offers no hook for that, so its own addFactory is wrapped.
    const add = registry.addFactory.bind(registry);
    registry.addFactory = (factory: IRenderMime.IRendererFactory, rank?: number): void => {
      if (this._agent && !factory.safe) {
        console.warn(
          `jupyter-qguard: ${factory.mimeTypes.join(', ')} can run script and is not ` +
            'available for the outputs of an agent kernel'
        );
        return;
      }
      add(factory, rank);
    };
  }

  private _wrap(factory: IRenderMime.IRendererFactory): IRenderMime.IRendererFactory {
    return {
      safe: factory.safe,
      mimeTypes: factory.mimeTypes,
      defaultRank: factory.defaultRank,
      createRenderer: (options: IRenderMime.IRendererOptions): IRenderMime.IRenderer => {
        // The options are fixed when the renderer is made, before the verdict may be known:
        // the sanitizer decides when it is called, which is during a render, after it.
        const renderer = factory.createRenderer({
          ...options,
          sanitizer: this._sanitizer(options.sanitizer)
        });
        // Renderers take more than the interface's one argument (keepExisting): pass them on.
        const render = renderer.renderModel.bind(renderer) as (
          model: IRenderMime.IMimeModel,
          ...rest: unknown[]
        ) => Promise<void>;
        renderer.renderModel = async (model: IRenderMime.IMimeModel, ...rest: unknown[]) => {
          const verdict = await this._verdictFor(model);
          if (verdict === 'plain') {
            return render(model, ...rest);
          }
          if (!factory.safe) {
            // Made before the lock removed it (JavaScript, say): show that nothing ran.
            renderer.node.textContent = 'Output that runs script is not shown for agent kernels.';
            renderer.node.classList.add('jp-QGuard-blocked');
            return;
          }
          return render(untrusted(model), ...rest);
        };
        return renderer;
      }
    };
  }

  /** For an agent's outputs: the sanitizer, then command links stripped. */
  private _sanitizer(sanitizer: IRenderMime.ISanitizer): IRenderMime.ISanitizer {
    return {
      sanitize: (dirty, options) => {
        const clean = sanitizer.sanitize(dirty, options);
        return this._agent ? withoutCommandLinks(clean) : clean;
      },
      getAutolink: () => sanitizer.getAutolink?.() ?? true,
      get allowNamedProperties() {
        return sanitizer.allowNamedProperties;
      },
      get allowCommandLinker() {
        return sanitizer.allowCommandLinker;
      }
    };
  }

  /** Trusted models wait for the verdict; untrusted ones are drawn untrusted at once. */
  private async _verdictFor(model: IRenderMime.IMimeModel): Promise<Verdict> {
    if (this._agent || !model.trusted) {
      return this._agent ? 'agent' : 'plain';
    }
    return this._verdict;
  }

  private _agent = false;
  private _verdict: Promise<Verdict>;
}

/** The same data and metadata, never trusted. */
function untrusted(model: IRenderMime.IMimeModel): IRenderMime.IMimeModel {
  return {
    trusted: false,
    get data() {
      return model.data;
    },
    get metadata() {
      return model.metadata;
    },
    setData: options => model.setData(options)
  };
}

/** Command-link attributes removed (the HTML parsed inert, in a <template>). */
function withoutCommandLinks(html: string): string {
  const template = document.createElement('template');
  template.innerHTML = html;
  for (const node of template.content.querySelectorAll('*')) {
    for (const name of COMMAND_LINK_ATTRS) {
      node.removeAttribute(name);
    }
  }
  return template.innerHTML;
}

/**
 * Keeps one cell untrusted: JupyterLab trusts a cell when it runs it, and on "Trust". The
 * connection has no owner, so it lasts as long as the cell model (shared by every view of the
 * notebook), not as long as the view that made it.
 */
function keepUntrusted(cell: ICellModel): void {
  if (watched.has(cell)) {
    return;
  }
  watched.add(cell);
  cell.trusted = false;
  cell.stateChanged.connect((_, change) => {
    if (change.name === 'trusted' && change.newValue === true) {
      cell.trusted = false;
    }
  });
}

const watched = new WeakSet<ICellModel>();
