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

// ------------------------------------------------------------------ verification (docs/api.md "Verification")

export type ImageStatus = 'new' | 'pre_segmented' | 'annotating' | 'submitted' | 'in_review' | 'disputed' | 'adjudication' | 'verified';
export const IMAGE_STATUSES: ImageStatus[] = ['new', 'pre_segmented', 'annotating', 'submitted', 'in_review', 'disputed', 'adjudication', 'verified'];
export const SPLITS = ['train', 'validation', 'test'] as const;
export const BETHESDA = ['I', 'II', 'III', 'IV', 'V', 'VI'] as const;

export interface TransitionState {
  status: string;
  annotator: number | null;
  allowed_actions: string[];
}

export interface QueueImage {
  id: number;
  file_name: string;
  status: string;
  thumbnail_url: string | null;
}

export interface QueueSection {
  count: number;
  images: QueueImage[];
}

export type QueueKind = 'annotate' | 'review' | 'adjudicate' | 'assign';

export interface WorkQueue {
  project: number;
  order: string;
  annotate: QueueSection;
  review: QueueSection;
  adjudicate: QueueSection;
  assign: QueueSection;
}

export type ReviewDecisionKind = 'accept' | 'reject' | 'edit';

export interface ReviewDecisionIO {
  cell_id: number;
  decision: ReviewDecisionKind;
  polygon?: Point[];
  class_id?: number | null;
}

export interface ReviewAddedIO {
  id?: number;
  class_id: number;
  polygon: Point[];
}

export interface ReviewCommentIO {
  cell_id: number | null;
  text: string;
  created_at?: string;
}

export interface ReviewDraftBody {
  decisions: ReviewDecisionIO[];
  added: ReviewAddedIO[];
  comments: ReviewCommentIO[];
}

export interface Review extends ReviewDraftBody {
  id: number;
  image: number;
  round: number;
  reviewer: number;
  username: string;
  status: 'assigned' | 'submitted' | 'cancelled' | string;
  submitted_at: string | null;
  counts: { accepted: number; rejected: number; edited: number; added: number };
}

export interface ReviewSubmitResult extends Review {
  submitted_now: boolean;
  image_status: string;
}

export interface VerificationRound {
  number: number;
  status: string;
  experts_required: number;
  quorum: number;
  match_iou: number;
  base_revision: number;
  summary: Record<string, unknown>;
}

export interface Member {
  id: number;
  user: number;
  username: string;
  role: Role;
  created_at?: string;
}

export interface Assignment {
  id: number;
  round: number;
  reviewer: number;
  username: string;
  status: string;
  manual: boolean;
  assigned_by: number | null;
  created_at: string;
  submitted_at: string | null;
  cancelled_at: string | null;
  cancel_reason: string;
}

export interface ReviewsOfRound {
  round: VerificationRound;
  reviews: Review[];
  assignments: Assignment[];
}

export type VersionDecision = 'accept' | 'edit' | 'add' | 'reject' | 'absent';

export interface DisputeVersion {
  review_id: number;
  reviewer_id: number;
  username: string;
  decision: VersionDecision | string;
  polygon: Point[] | null;
  class_id: number | null;
}

export interface Dispute {
  id: number;
  reason: 'quorum' | 'added' | 'class' | string;
  origin_cell_id: number | null;
  annotation: { polygon: Point[]; class_id: number | null } | null;
  versions: DisputeVersion[];
  candidate: Point[] | null;
  candidate_class_id: number | null;
  status: 'open' | 'resolved' | string;
  choice: string;
  polygon: Point[] | null;
  class_id: number | null;
  resolved_by: number | null;
  resolved_at: string | null;
}

export interface Adjudication {
  image: number;
  status: string;
  round: VerificationRound | null;
  agreed: number;
  disputes: Dispute[];
}

export interface AdjudicationDecisionIO {
  dispute_id: number;
  choice: string;
  polygon?: Point[];
  class_id?: number;
}

export interface AgreementSummary {
  images: number;
  status_counts: Record<string, number>;
  verified_images: number;
  rounds_done: number;
  rounds_with_disputes: number;
  disputes: number;
  disputes_resolved: number;
  pairs: number;
  f1: number | null;
  mean_iou: number | null;
  dice: number | null;
}

export interface AgreementPair {
  reviewer_a: number;
  reviewer_a__username: string;
  reviewer_b: number;
  reviewer_b__username: string;
  images: number;
  f1: number | null;
  mean_iou: number | null;
  dice: number | null;
}

export interface ExpertStats {
  reviewer: number;
  reviewer__username?: string;
  reviews: number;
  accepted: number | null;
  rejected: number | null;
  edited: number | null;
  added: number | null;
  acceptance_rate: number | null;
  rejection_rate: number | null;
  edit_rate: number | null;
  consensus_f1: number | null;
  consensus_mean_iou: number | null;
  consensus_dice: number | null;
  month?: string;
  by_month?: ExpertStats[];
}

export interface Agreement {
  summary: AgreementSummary;
  pairs: AgreementPair[];
  experts: ExpertStats[];
  /** Not (yet) in the API: per-image rows when the server provides them. */
  per_image?: { image: number; file_name?: string; f1: number | null; mean_iou: number | null; dice: number | null }[];
}

export interface CorrectionRow {
  model_version: number | null;
  model_version__kind: string | null;
  model_version__number: number | null;
  model_version__name: string | null;
  images: number;
  kept: number;
  edited: number;
  added: number;
  deleted: number;
  ignored: number;
  edited_mean_iou: number | null;
  kept_rate: number | null;
  proposal_precision: number | null;
  proposal_recall: number | null;
}

export interface Corrections {
  model_versions: CorrectionRow[];
  totals: Record<string, number | null>;
}

// ------------------------------------------------------------------ training (training/api)

export type JobKind = 'nnunet' | 'cellpose' | 'two_stage' | 'refinement';
export type JobStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface JobProgress {
  stage?: string;
  phase?: string;
  epoch?: number;
  epochs?: number;
  iteration?: number | null;
  iterations?: number | null;
  loss?: number | null;
  step?: string | number | null;
}

export type CurvePoint = Record<string, number | null | undefined>;

export interface TrainingJob {
  id: number;
  project: number;
  kind: JobKind | string;
  status: JobStatus | string;
  trigger: string;
  snapshot: number;
  snapshot_number: number | null;
  config: Record<string, unknown>;
  resolved_config?: Record<string, unknown>;
  created_by: string | null;
  cancel_requested: boolean;
  cancelled_by: string | null;
  progress: JobProgress;
  curves?: Record<string, CurvePoint[]>;
  timings: Record<string, number>;
  error: string;
  result: { versions?: { id: number; kind: string; number: number }[]; promotion?: Record<string, Record<string, unknown>> } & Record<string, unknown>;
  model_versions: number[];
  task_id: string;
  worker_host: string;
  worker_pid: number | null;
  heartbeat_at: string | null;
  artifact_dir: string;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  log?: string;
}

export interface RegistryRow {
  id: number;
  kind: string;
  number: number;
  name: string;
  status: 'candidate' | 'active' | 'retired' | 'failed' | string;
  job: number | null;
  snapshot: number | null;
  promoted_at: string | null;
  created_at: string;
  metrics: Record<string, number | null> | null;
  per_bethesda: Record<string, Record<string, number | null>> | null;
}

export interface Registry {
  snapshot: number | null;
  metric_names: string[];
  versions: RegistryRow[];
}

export interface DatasetSnapshot {
  id: number;
  project: number;
  number: number;
  source: string;
  options: Record<string, unknown>;
  counts: Record<string, { images?: number; cells?: number }>;
  excluded: unknown[];
  sha256: string;
  created_by: number | null;
  created_at: string;
}

export interface TrainingPolicy {
  project: number;
  schedule_enabled: boolean;
  cron_minute: string;
  cron_hour: string;
  cron_day_of_week: string;
  cron_day_of_month: string;
  cron_month_of_year: string;
  min_new_images: number;
  job_kind: string;
  job_config: Record<string, unknown>;
  auto_promote: boolean;
  gate_metric: string;
  gate_margin: number | null;
  gate_tolerance: number | null;
  gate_guarded: string[];
  periodic_task: number | null;
  last_check_at: string | null;
  last_check: Record<string, unknown>;
  new_images: number;
  live_job: number | null;
  updated_at: string;
}
