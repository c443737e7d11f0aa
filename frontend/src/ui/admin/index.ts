/**
 * The administration screen of a project: the tabs (common.ts) and the panel of
 * the current one — training jobs (training.ts), the model registry
 * (registry.ts), the retraining schedule (schedule.ts), the expert-agreement
 * dashboard (agreement.ts), the verification settings (verification.ts), members and roles (members.ts), the project's webhooks (webhooks.ts), and for staff
 * the platform's workers and queues (workers.ts).
 */
import { ApiError } from '../../core/api';
import { STAFF_TABS, type AdminTab } from '../../core/router';
import type { Project } from '../../core/types';
import type { App, Screen } from '../app';
import { AgreementPanel } from './agreement';
import { adminPage, forbidden, tabVisible, type AdminPanel } from './common';
import { MembersPanel } from './members';
import { RegistryPanel } from './registry';
import { SchedulePanel } from './schedule';
import { TrainingPanel } from './training';
import { VerificationPanel } from './verification';
import { WebhooksPanel } from './webhooks';
import { WorkersPanel } from './workers';

const PANELS: Record<AdminTab, new (app: App, project: Project) => AdminPanel> = {
  training: TrainingPanel,
  models: RegistryPanel,
  schedule: SchedulePanel,
  agreement: AgreementPanel,
  verification: VerificationPanel,
  members: MembersPanel,
  webhooks: WebhooksPanel,
  workers: WorkersPanel,
};

export class AdminScreen implements Screen {
  private panel: AdminPanel | null = null;
  private alive = true;

  constructor(
    private readonly app: App,
    private readonly projectId: number,
    private readonly tab: AdminTab,
  ) {}

  async mount(root: HTMLElement): Promise<void> {
    const page = adminPage(this.app, this.projectId, this.tab);
    const content = page.content;
    root.append(...page.nodes);
    let project: Project;
    try {
      project = await this.app.api.getProject(this.projectId);
    } catch (e) {
      if (this.alive) content.replaceChildren(forbidden(e));
      return;
    }
    if (!this.alive) return;
    page.setProject(project);
    // the workers tab is the platform's (staff), the others the project's (its admins)
    const allowed = STAFF_TABS.includes(this.tab) ? tabVisible(this.tab, this.app.user) : project.my_role === 'admin' || !!this.app.user?.is_superuser;
    if (!allowed) {
      content.replaceChildren(forbidden(new ApiError(403, 'admins only')));
      return;
    }
    this.panel = new PANELS[this.tab](this.app, project);
    await this.panel.mount(content);
  }

  unmount(): void {
    this.alive = false;
    this.panel?.dispose();
  }
}
