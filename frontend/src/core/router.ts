/** Hash routes (`#/projects/1/images/5`): parsing and building, framework free. */

export type Route =
  | { name: 'login'; next?: string }
  | { name: 'projects' }
  | { name: 'images'; projectId: number }
  | { name: 'editor'; projectId: number; imageId: number }
  | { name: 'notfound'; path: string };

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
  if (parts[0] === 'projects') {
    if (parts.length === 1) return { name: 'projects' };
    const projectId = Number(parts[1]);
    if (!Number.isInteger(projectId) || projectId <= 0) return { name: 'notfound', path };
    if (parts.length === 2 || (parts.length === 3 && parts[2] === 'images')) return { name: 'images', projectId };
    if (parts.length === 4 && parts[2] === 'images') {
      const imageId = Number(parts[3]);
      if (Number.isInteger(imageId) && imageId > 0) return { name: 'editor', projectId, imageId };
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
    case 'images':
      return `#/projects/${r.projectId}`;
    case 'editor':
      return `#/projects/${r.projectId}/images/${r.imageId}`;
    case 'notfound':
      return `#/${r.path}`;
  }
}
