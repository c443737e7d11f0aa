import { describe, expect, it } from 'vitest';
import { firstRunSteps, showFirstRun } from '../src/core/firstRun';

describe('first run', () => {
  it('shows only for a project without any image', () => {
    expect(showFirstRun(0, false)).toBe(true);
    expect(showFirstRun(0, true)).toBe(false); // filters that match nothing: say so instead
    expect(showFirstRun(3, false)).toBe(false);
  });

  it('walks an admin through classes, upload, pre-segmentation, annotation and submission', () => {
    const steps = firstRunSteps({ projectId: 4, role: 'admin', classes: [{ name: 'Thyrocyte' }, { name: 'Erythrocyte' }], images: 0 });
    expect(steps.map((s) => s.id)).toEqual(['classes', 'upload', 'presegment', 'annotate', 'submit']);
    expect(steps[0].done).toBe(true);
    expect(steps[0].text).toContain('Thyrocyte and Erythrocyte');
    expect(steps[0].text).toContain('projects/4/classes');
    expect(steps[1]).toMatchObject({ done: false, action: { open: 'upload' } });
    expect(steps[2].action?.open).toBe('presegment');
    expect(steps[4].action?.href).toBe('#/projects/4/admin/verification');
    for (const s of steps) expect(s.text.length).toBeGreaterThan(40);
  });

  it('tells others who does the admin steps, and flags a project without classes', () => {
    const steps = firstRunSteps({ projectId: 1, role: 'annotator', classes: [], images: 0 });
    expect(steps[0].done).toBe(false);
    expect(steps[0].text).toMatch(/no cell class yet/);
    expect(steps[1].action).toBeUndefined();
    expect(steps[1].text).toMatch(/project admin uploads/);
    expect(steps[2].action).toBeUndefined();
    expect(steps[4].action).toBeUndefined();
  });

  it('lists many classes briefly', () => {
    const classes = ['a', 'b', 'c', 'd', 'e', 'f'].map((name) => ({ name }));
    expect(firstRunSteps({ projectId: 1, role: 'admin', classes, images: 1 })[0].text).toContain('a, b, c, d and 2 more');
    expect(firstRunSteps({ projectId: 1, role: 'admin', classes, images: 1 })[1].done).toBe(true);
  });
});
