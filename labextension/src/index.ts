/**
 * jupyter-qguard: the JupyterLab side of jupyter_qguard. A left-sidebar panel lists the quantum
 * jobs that agents asked to run and that the policy sent to a human, with Approve and Deny.
 */

import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { IConsoleTracker } from '@jupyterlab/console';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { IJob, JobEvents, QGuardClient, requesterLabel } from './api';
import { ApprovalsPanel } from './panel';
import { AgentOutputGuard, GUARDED_ATTR } from './untrusted';

const PLUGIN_ID = 'jupyter-qguard:plugin';

/** Mirrors schema/plugin.json, for when there is no setting registry. */
const DEFAULTS = { notifyOnRequest: true, maxJobs: 200 };

/**
 * Outputs of agent kernels are rendered untrusted (see untrusted.ts). A plugin of its own, with
 * no settings: nothing turns it off.
 */
const outputsPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-qguard:agent-outputs',
  description: 'Renders the outputs of qguard agent kernels untrusted: no script ever runs.',
  autoStart: true,
  optional: [INotebookTracker, IConsoleTracker],
  activate: (
    app: JupyterFrontEnd,
    notebooks: INotebookTracker | null,
    consoles: IConsoleTracker | null
  ): void => {
    const guard = new AgentOutputGuard(new QGuardClient(app.serviceManager.serverSettings));
    notebooks?.forEach(panel => guard.watchNotebook(panel));
    notebooks?.widgetAdded.connect((_, panel) => guard.watchNotebook(panel));
    consoles?.forEach(panel => guard.watchConsole(panel));
    consoles?.widgetAdded.connect((_, panel) => guard.watchConsole(panel));
    app.commands.commandExecuted.connect((_, args) => {
      const current = notebooks?.currentWidget;
      if (args.id === 'notebook:trust' && current?.node.hasAttribute(GUARDED_ATTR)) {
        // The cells were trusted and at once made untrusted again: say why.
        Notification.warning(
          'This notebook runs a qguard agent kernel: its outputs are always shown untrusted.',
          { autoClose: 8000 }
        );
      }
    });
  }
};

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Approve or deny, from a side panel, the quantum jobs that agents ask to run.',
  autoStart: true,
  optional: [ISettingRegistry, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    registry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null
  ): void => {
    // The application's own server settings: the same base URL, token and XSRF handling as
    // every other request the page makes.
    const serverSettings = app.serviceManager.serverSettings;
    const events = new JobEvents(serverSettings);
    const panel = new ApprovalsPanel({
      client: new QGuardClient(serverSettings),
      events,
      limit: DEFAULTS.maxJobs,
      sessions: app.serviceManager.sessions
    });
    panel.disposed.connect(() => events.dispose());

    app.shell.add(panel, 'left', { rank: 650 });
    // Keeps the panel open (or not) across page reloads, like the file browser.
    restorer?.add(panel, panel.id);

    // Alerts reach the person whatever is open: a toast, which stays until dismissed where
    // the server stopped something (a kernel at its write budget, on a filling disk).
    events.alertRaised.connect((_, alert) => {
      const text = `qguard: ${alert.message}`;
      if (alert.level === 'stop' || alert.level === 'full' || alert.kind === 'write_budget') {
        Notification.error(text, { autoClose: false });
      } else {
        Notification.warning(text, { autoClose: 15000 });
      }
    });

    let notify = DEFAULTS.notifyOnRequest;
    panel.requested.connect((_, job) => {
      if (notify) {
        announce(app, panel, job);
      }
    });

    if (registry) {
      registry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = (): void => {
            notify = settings.get('notifyOnRequest').composite as boolean;
            panel.limit = settings.get('maxJobs').composite as number;
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.error(`jupyter-qguard: settings could not be loaded, defaults apply: ${reason}`);
        });
    }
  }
};

/** A toast for a new request, with a button that opens the panel on it. */
function announce(app: JupyterFrontEnd, panel: ApprovalsPanel, job: IJob): void {
  const who = requesterLabel(job.requester);
  const shots = job.shots.toLocaleString();
  Notification.info(
    `Quantum job waiting for approval: ${who} asks for ${shots} shots on ${job.backend}.`,
    {
      autoClose: 10000,
      actions: [
        {
          label: 'Review',
          caption: 'Open the job approvals panel',
          callback: () => app.shell.activateById(panel.id)
        }
      ]
    }
  );
}

export default [plugin, outputsPlugin];
