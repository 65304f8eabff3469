/**
 * The review of one request: what the agent asks to run and why the policy let it through.
 *
 * Everything here comes from the agent (source, notebook, file contents) or is about it, so it
 * is written as text nodes only: nothing the agent wrote is ever parsed as HTML.
 */

import { IJob, IReview, QGuardClient } from './api';

/** A <details> that loads the review the first time it is opened. */
export function reviewSection(job: IJob, client: QGuardClient): HTMLDetailsElement {
  const details = document.createElement('details');
  details.className = 'jp-QGuard-review';
  const summary = text('summary', 'Review');
  summary.setAttribute('aria-label', `Review job ${job.id.slice(0, 8)}`);
  details.append(summary, decisionPart(job));
  let loaded = false;
  details.addEventListener('toggle', () => {
    if (!details.open || loaded) {
      return;
    }
    loaded = true;
    const status = text('p', 'Loading the review…', 'jp-QGuard-reviewStatus');
    status.setAttribute('role', 'status');
    details.append(status);
    client.review(job).then(
      review => status.replaceWith(reviewPart(review)),
      (err: unknown) => {
        status.textContent = `The review could not be read: ${err instanceof Error ? err.message : String(err)}`;
        loaded = false;
      }
    );
  });
  return details;
}

function decisionPart(job: IJob): HTMLElement {
  const box = document.createElement('div');
  const decision = job.decision ?? {};
  const findings = decision.lint?.findings ?? [];
  box.append(heading('Lint'));
  box.append(
    findings.length
      ? list(
          findings.map(f => `${f.severity}: ${f.message} (${f.code})`),
          'jp-QGuard-lint'
        )
      : text('p', 'No findings.')
  );
  box.append(heading('Policy'));
  const reasons = [...(decision.deny ?? []), ...(decision.notes ?? [])];
  box.append(reasons.length ? list(reasons, 'jp-QGuard-reasons') : text('p', 'Allowed, no notes.'));
  const preflight = decision.preflight;
  box.append(heading('Preflight simulation'));
  if (preflight?.counts && Object.keys(preflight.counts).length) {
    box.append(histogram(preflight.counts));
  } else {
    box.append(text('p', preflight?.skipped ?? 'None was run.'));
  }
  return box;
}

function reviewPart(review: IReview): HTMLElement {
  const box = document.createElement('div');
  const b = review.budget;
  box.append(heading('Cost'));
  const cost = [
    `this job: ${money(b.this_job, b.currency)}`,
    `spent today: ${money(b.spent_today, b.currency)}`,
    b.daily === null || b.daily === undefined
      ? 'no daily budget'
      : `left today: ${money(b.left, b.currency)} of ${money(b.daily, b.currency)}`
  ];
  box.append(list(cost, 'jp-QGuard-budget'));
  box.append(heading('Circuit'));
  box.append(
    text(
      'pre',
      review.drawing ?? 'No drawing (the program could not be drawn).',
      'jp-QGuard-drawing'
    )
  );
  if (review.source) {
    box.append(heading(`Source (${review.format})`));
    box.append(text('pre', review.source, 'jp-QGuard-source'));
  }
  box.append(heading('Bound files'));
  for (const file of review.files) {
    const change = file.change;
    box.append(
      text(
        'p',
        change
          ? `${file.path}: last changed by ${change.actor}`
          : `${file.path}: no recorded change`,
        'jp-QGuard-file'
      )
    );
    const lines = change?.diff?.lines;
    if (lines?.length) {
      box.append(text('pre', lines.join('\n'), 'jp-QGuard-diff'));
    } else if (change?.diff?.unavailable) {
      box.append(text('p', change.diff.unavailable));
    }
  }
  return box;
}

/** Bars of the preflight counts, most frequent first, with the numbers as text. */
function histogram(counts: Record<string, number>): HTMLElement {
  const total = Object.values(counts).reduce((a, b) => a + b, 0) || 1;
  const rows = Object.entries(counts)
    .sort((a, b) => b[1] - a[1])
    .slice(0, 16);
  const table = document.createElement('table');
  table.className = 'jp-QGuard-histogram';
  table.setAttribute('aria-label', 'Preflight counts by outcome');
  for (const [outcome, n] of rows) {
    const tr = document.createElement('tr');
    tr.dataset.outcome = outcome;
    const bar = document.createElement('span');
    bar.className = 'jp-QGuard-bar';
    bar.style.width = `${Math.max(1, Math.round((100 * n) / total))}%`;
    const cell = document.createElement('td');
    cell.append(bar);
    tr.append(text('th', outcome), cell, text('td', `${n} (${((100 * n) / total).toFixed(1)}%)`));
    table.append(tr);
  }
  return table;
}

function money(value: number | null | undefined, currency: string): string {
  return value === null || value === undefined ? '—' : `${value.toFixed(2)} ${currency}`;
}

function heading(label: string): HTMLElement {
  return text('h4', label, 'jp-QGuard-reviewHeading');
}

function list(items: string[], className: string): HTMLUListElement {
  const ul = document.createElement('ul');
  ul.className = className;
  for (const item of items) {
    ul.append(text('li', item));
  }
  return ul;
}

function text<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  content: string,
  className?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.textContent = content;
  if (className) {
    node.className = className;
  }
  return node;
}
