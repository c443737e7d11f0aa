/** Hash routes (`#/projects/1/images/5`): parsing and building, framework free. */

export type AdminTab = 'training' | 'models' | 'schedule' | 'agreement' | 'verification' | 'members' | 'webhooks' | 'workers';
export const ADMIN_TABS: AdminTab[] = ['training', 'models', 'schedule', 'agreement', 'verification', 'members', 'webhooks', 'workers'];
/** Tabs for staff only (platform-wide, not the project's): shown to them whatever their role. */
export const STAFF_TABS: readonly AdminTab[] = ['workers'];
/** Tabs shown only once the project is known to be one the user administers (webhooks hold secrets). */
export const PROJECT_ADMIN_TABS: readonly AdminTab[] = ['verification', 'members', 'webhooks'];

export type Route =
  | { name: 'login'; next?: string }
  | { name: 'projects' }
  | { name: 'tokens' }
  | { name: 'images'; projectId: number }
  | { name: 'editor'; projectId: number; imageId: number }
  /** `regionId`: the review of one region of a slide (its own round), `?region=<id>`. */
  | { name: 'review'; projectId: number; imageId: number; regionId?: number }
  | { name: 'adjudicate'; projectId: number; imageId: number; regionId?: number }
  | { name: 'admin'; projectId: number; tab: AdminTab }
  | { name: 'job'; projectId: number; jobId: number }
  | { name: 'notfound'; path: string };

function posInt(s: string | undefined): number | null {
  const n = Number(s);
  return Number.isInteger(n) && n > 0 ? n : null;
}

export function parseRoute(hash: string): Route {
  const raw = hash.replace(/^#/, '');
  const [path, query = ''] = raw.split('?');
  const parts = path.split('/').filter(Boolean);
  const params = new URLSearchParams(query);
  if (parts.length === 0) return { name: 'projects' };
  if (parts[0] === 'login') {
    const next = params.get('next') ?? undefined;
    return next ? { name: 'login', next } : { name: 'login' };
  }
  if (parts[0] === 'tokens' && parts.length === 1) return { name: 'tokens' };
  if (parts[0] === 'projects') {
    if (parts.length === 1) return { name: 'projects' };
    const projectId = posInt(parts[1]);
    if (projectId === null) return { name: 'notfound', path };
    if (parts.length === 2 || (parts.length === 3 && parts[2] === 'images')) return { name: 'images', projectId };
    if (parts[2] === 'images' && (parts.length === 4 || parts.length === 5)) {
      const imageId = posInt(parts[3]);
      if (imageId !== null) {
        if (parts.length === 4) return { name: 'editor', projectId, imageId };
        if (parts[4] === 'review') {
          const regionId = posInt(params.get('region') ?? undefined);
          return regionId === null ? { name: 'review', projectId, imageId } : { name: 'review', projectId, imageId, regionId };
        }
        if (parts[4] === 'adjudicate') {
          const regionId = posInt(params.get('region') ?? undefined);
          return regionId === null ? { name: 'adjudicate', projectId, imageId } : { name: 'adjudicate', projectId, imageId, regionId };
        }
      }
    }
    if (parts[2] === 'admin') {
      if (parts.length === 3) return { name: 'admin', projectId, tab: 'training' };
      if (parts.length === 4 && (ADMIN_TABS as string[]).includes(parts[3])) return { name: 'admin', projectId, tab: parts[3] as AdminTab };
      if (parts.length === 5 && parts[3] === 'jobs') {
        const jobId = posInt(parts[4]);
        if (jobId !== null) return { name: 'job', projectId, jobId };
      }
    }
  }
  return { name: 'notfound', path };
}

export function routeHash(r: Route): string {
  switch (r.name) {
    case 'login':
      return r.next ? `#/login?next=${encodeURIComponent(r.next)}` : '#/login';
    case 'projects':
      return '#/projects';
    case 'tokens':
      return '#/tokens';
    case 'images':
      return `#/projects/${r.projectId}`;
    case 'editor':
      return `#/projects/${r.projectId}/images/${r.imageId}`;
    case 'review':
      return `#/projects/${r.projectId}/images/${r.imageId}/review${r.regionId ? `?region=${r.regionId}` : ''}`;
    case 'adjudicate':
      return `#/projects/${r.projectId}/images/${r.imageId}/adjudicate${r.regionId ? `?region=${r.regionId}` : ''}`;
    case 'admin':
      return `#/projects/${r.projectId}/admin/${r.tab}`;
    case 'job':
      return `#/projects/${r.projectId}/admin/jobs/${r.jobId}`;
    case 'notfound':
      return `#/${r.path}`;
  }
}
