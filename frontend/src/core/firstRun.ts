/**
 * The guided start of a project without images (issue #17): the five steps
 * from an empty project to a first verified image, each saying where it is
 * done. Pure, so the wording and what counts as done are tested without a DOM.
 */
import { routeHash } from './router';

export type FirstRunStepId = 'classes' | 'upload' | 'presegment' | 'annotate' | 'submit';

export interface FirstRunStep {
  id: FirstRunStepId;
  title: string;
  text: string;
  done: boolean;
  /** What the step's button does: open a panel of the image list, or follow a link. */
  action?: { label: string; open?: 'upload' | 'presegment'; href?: string };
}

export interface FirstRunInput {
  projectId: number;
  /** the user's role in the project (admins upload and pre-segment) */
  role: string | null | undefined;
  classes: { name: string }[];
  images: number;
}

/** Whether the image list shows the guided start instead of its grid: no image at all, not merely none matching the filters. */
export function showFirstRun(images: number, filtered: boolean): boolean {
  return images === 0 && !filtered;
}

function listNames(names: string[], max = 4): string {
  if (!names.length) return '';
  const shown = names.slice(0, max);
  const more = names.length - shown.length;
  return more > 0 ? `${shown.join(', ')} and ${more} more` : shown.length > 1 ? `${shown.slice(0, -1).join(', ')} and ${shown[shown.length - 1]}` : shown[0];
}

export function firstRunSteps(input: FirstRunInput): FirstRunStep[] {
  const admin = input.role === 'admin';
  const names = input.classes.map((c) => c.name);
  const hasImages = input.images > 0;
  return [
    {
      id: 'classes',
      title: 'Check the cell classes',
      text: names.length
        ? `Cells are labelled ${listNames(names)}. The editor's palette and the exports use these; project admins change them through the API (projects/${input.projectId}/classes).`
        : `The project has no cell class yet: a project admin adds them through the API (projects/${input.projectId}/classes) before anyone annotates.`,
      done: names.length > 0,
      action: { label: 'API reference', href: '/api/v1/docs' },
    },
    {
      id: 'upload',
      title: 'Upload images',
      text: admin ? 'Add Diff-Quik fields (PNG, JPEG or TIFF), with their Bethesda category and split if you know them.' : 'A project admin uploads the images; they appear here.',
      done: hasImages,
      action: admin ? { label: 'Upload images', open: 'upload' } : undefined,
    },
    {
      id: 'presegment',
      title: 'Pre-segment',
      text: admin ? 'Run the model on the new images so that each starts with proposed cell contours: doctors correct instead of drawing everything.' : 'A project admin runs the model so that each image starts with proposed contours.',
      done: false,
      action: admin ? { label: 'Pre-segment', open: 'presegment' } : undefined,
    },
    {
      id: 'annotate',
      title: 'Annotate',
      text: 'Open an image from this list (or "Annotate next" above it): accept or correct the proposals, draw the missing cells and give each its class.',
      done: false,
    },
    {
      id: 'submit',
      title: 'Submit for review',
      text: 'When an image is complete, "Submit for review" in the editor sends it to the experts, who verify it blind; the verified images train the next model.',
      done: false,
      action: admin ? { label: 'Verification settings', href: routeHash({ name: 'admin', projectId: input.projectId, tab: 'verification' }) } : undefined,
    },
  ];
}
