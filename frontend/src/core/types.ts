/**
 * Types of the REST API v1 (see docs/api.md). Pixel coordinates are those of
 * the API: origin top-left, x to the right, y down.
 */

export type Point = [number, number];
/** An open ring: the first point is NOT repeated at the end. */
export type Ring = Point[];

export interface User {
  id: number;
  username: string;
  is_superuser: boolean;
  memberships?: { project: number; role: Role }[];
}

export type Role = 'annotator' | 'expert' | 'admin';

export interface CellClass {
  id: number;
  name: string;
  color: string;
  model_label?: string | null;
  order: number;
}

export interface Project {
  id: number;
  name: string;
  description: string;
  classes: CellClass[];
  experts_required?: number;
  quorum?: number;
  match_iou?: number;
  auto_presegment?: boolean;
  pipeline?: Record<string, unknown>;
  my_role: Role | null;
  image_count: number;
}

export interface ImageInfo {
  id: number;
  project: number;
  file_name: string;
  width: number;
  height: number;
  bethesda: string | null;
  stain: string | null;
  magnification: string | number | null;
  slide_code: string | null;
  split: string | null;
  status: string;
  presegment_status: string | null;
  presegment_error: string | null;
  revision: number;
  cell_count: number;
  thumbnail_url: string | null;
  display_url: string | null;
  created_at: string;
}

export type Layer = 'annotation' | 'proposal' | 'verified';

export interface ApiCell {
  id: number;
  class_id: number | null;
  polygon: Point[];
  layer?: Layer;
  source?: string | null;
  score?: number | null;
  model_version?: string | number | null;
  label?: string | null;
  author?: number | string | null;
  bbox?: [number, number, number, number];
  area?: number;
  created_at?: string;
  updated_at?: string;
}

export interface CellsResponse {
  revision: number;
  cells: ApiCell[];
}

/** One cell of a `PUT images/{id}/cells` body. */
export interface CellPayload {
  id?: number;
  class_id: number | null;
  polygon: Point[];
}

export interface SaveCellsBody {
  revision: number;
  cells: CellPayload[];
}

export interface Paginated<T> {
  count: number;
  next: string | null;
  previous: string | null;
  results: T[];
}

export interface HistoryEntry {
  revision: number;
  author: string | number | null;
  created_at: string;
  action: string;
  summary: string;
}

export interface ImageFilters {
  status?: string;
  split?: string;
  bethesda?: string;
  cell_class?: string;
  search?: string;
  page?: number;
  page_size?: number;
}
