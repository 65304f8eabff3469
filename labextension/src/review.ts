/**
 * The review of one request: what the agent asks to run and why the policy let it through.
 *
 * Everything here comes from the agent (source, notebook, file contents) or is about it, so it
 * is written as text nodes only: nothing the agent wrote is ever parsed as HTML.
 */

import { IJob, IReview, QGuardClient } from './api';
import { element, messageOf } from './dom';

/** A <details> that loads the review the first time it is opened. */
export function reviewSection(job: IJob, client: QGuardClient): HTMLDetailsElement {
  const details = element('details', 'jp-QGuard-review');
  const summary = element('summary', undefined, 'Review');
  summary.setAttribute('aria-label', `Review job ${job.id.slice(0, 8)}`);
  details.append(summary, decisionPart(job));
  let loaded = false;
  details.addEventListener('toggle', () => {
    if (!details.open || loaded) {
      return;
    }
    loaded = true;
    const status = element('p', 'jp-QGuard-reviewStatus', 'Loading the review…');
    status.setAttribute('role', 'status');
    details.append(status);
    client.review(job).then(
      review => status.replaceWith(reviewPart(review)),
      (err: unknown) => {
        status.textContent = `The review could not be read: ${messageOf(err)}`;
        loaded = false;
      }
    );
  });
  return details;
}

function decisionPart(job: IJob): HTMLElement {
  const box = element('div');
  const decision = job.decision ?? {};
  const findings = decision.lint?.findings ?? [];
  box.append(heading('Lint'));
  box.append(
    findings.length
      ? list(
          findings.map(f => `${f.severity}: ${f.message} (${f.code})`),
          'jp-QGuard-lint'
        )
      : element('p', undefined, 'No findings.')
  );
  box.append(heading('Policy'));
  const reasons = [...(decision.deny ?? []), ...(decision.notes ?? [])];
  box.append(
    reasons.length
      ? list(reasons, 'jp-QGuard-reasons')
      : element('p', undefined, 'Allowed, no notes.')
  );
  const preflight = decision.preflight;
  box.append(heading('Preflight simulation'));
  if (preflight?.counts && Object.keys(preflight.counts).length) {
    box.append(histogram(preflight.counts));
  } else {
    box.append(element('p', undefined, preflight?.skipped ?? 'None was run.'));
  }
  return box;
}

function reviewPart(review: IReview): HTMLElement {
  const box = element('div');
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
  // The drawing is of the program the broker parsed, transpiled as it will run; the source
  // is only what the kernel says the program is, and is labelled so.
  box.append(
    heading(
      review.drawing_target
        ? `Circuit as it will run (transpiled for ${review.drawing_target})`
        : 'Circuit'
    )
  );
  box.append(
    element(
      'pre',
      'jp-QGuard-drawing',
      review.drawing ?? `No drawing (${review.drawing_note ?? 'the program could not be drawn'}).`
    )
  );
  if (review.drawing && !review.drawing_target && review.drawing_note) {
    box.append(element('p', 'jp-QGuard-drawingNote', `Drawn as sent: ${review.drawing_note}.`));
  }
  if (review.source) {
    box.append(heading(`Source (${review.format}): the kernel's own description, unverified`));
    box.append(
      element(
        'p',
        'jp-QGuard-sourceNote',
        review.source_note ??
          "The kernel's own description of the program, unverified: what runs is the program the drawing and the lint were made from."
      )
    );
    box.append(element('pre', 'jp-QGuard-source', review.source));
  }
  box.append(heading('Bound files'));
  for (const file of review.files) {
    const change = file.change;
    box.append(
      element(
        'p',
        'jp-QGuard-file',
        change
          ? `${file.path}: last changed by ${change.actor}`
          : `${file.path}: no recorded change`
      )
    );
    const lines = change?.diff?.lines;
    if (lines?.length) {
      box.append(element('pre', 'jp-QGuard-diff', lines.join('\n')));
    } else if (change?.diff?.unavailable) {
      box.append(element('p', undefined, change.diff.unavailable));
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
  const table = element('table', 'jp-QGuard-histogram');
  table.setAttribute('aria-label', 'Preflight counts by outcome');
  for (const [outcome, n] of rows) {
    const tr = element('tr');
    tr.dataset.outcome = outcome;
    const bar = element('span', 'jp-QGuard-bar');
    bar.style.width = `${Math.max(1, Math.round((100 * n) / total))}%`;
    const cell = element('td');
    cell.append(bar);
    tr.append(
      element('th', undefined, outcome),
      cell,
      element('td', undefined, `${n} (${((100 * n) / total).toFixed(1)}%)`)
    );
    table.append(tr);
  }
  return table;
}

function money(value: number | null | undefined, currency: string): string {
  return value === null || value === undefined ? '—' : `${value.toFixed(2)} ${currency}`;
}

function heading(label: string): HTMLElement {
  return element('h4', 'jp-QGuard-reviewHeading', label);
}

function list(items: string[], className: string): HTMLUListElement {
  const ul = element('ul', className);
  for (const item of items) {
    ul.append(element('li', undefined, item));
  }
  return ul;
}
