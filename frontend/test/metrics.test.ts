import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { METRIC_HELP, metricHelp, metricHelpId, metricLabel, REGISTRY_KEY_METRICS } from '../src/core/metrics';
import { METRIC_LABELS } from '../src/core/training';

/** The summary metrics the server computes (cytoseg/evaluation.py METRICS): what the registry lists with "All metrics". */
function serverMetrics(): string[] {
  const src = readFileSync(resolve(__dirname, '../../cytoseg/evaluation.py'), 'utf8');
  const block = /^METRICS: tuple\[str, \.\.\.\] = \(([\s\S]*?)\n\)/m.exec(src);
  expect(block, 'METRICS tuple in cytoseg/evaluation.py').toBeTruthy();
  return [...block![1].matchAll(/"([^"]+)"/g)].map((m) => m[1]);
}

describe('metric legend', () => {
  it('explains every metric the screens can show', () => {
    const server = serverMetrics();
    expect(server.length).toBeGreaterThan(20);
    const shown = new Set([...server, ...Object.keys(METRIC_LABELS), ...REGISTRY_KEY_METRICS]);
    const missing = [...shown].filter((k) => !METRIC_HELP[k]);
    expect(missing).toEqual([]);
    for (const k of shown) expect(METRIC_HELP[k].length).toBeGreaterThan(30);
  });

  it('says which direction is better', () => {
    for (const [k, text] of Object.entries(METRIC_HELP)) expect(text, k).toMatch(/(Higher|Lower) is better\.$/);
    expect(metricHelp('erythrocyte_fp_rate')).toMatch(/Lower is better/);
  });

  it('falls back for a metric this build does not know', () => {
    expect(metricHelp('new_metric')).toBe('new metric: an evaluation metric on the test split.');
    expect(metricLabel('boundary_ranked_ap50')).toBe('bAP50');
    expect(metricHelpId('coco_AP50', 'registry')).toBe('registry-help-coco_AP50');
    expect(metricHelpId('a.b c')).toBe('metric-help-a_b_c');
  });
});
