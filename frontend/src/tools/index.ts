import { BoxTool } from './boxTool';
import { BrushTool, EraserTool } from './brushTool';
import { ClassifyTool, DeleteTool, MergeTool } from './clickTools';
import { DrawPolygonTool } from './drawTool';
import { RegionTool } from './regionTool';
import { SegmentTool } from './segmentTool';
import { SelectTool } from './selectTool';
import { SplitTool } from './splitTool';
import type { Tool } from './tool';

export type { Tool, ToolContext, ToolId } from './tool';

export function createTools(): Tool[] {
  return [new SelectTool(), new DrawPolygonTool(), new SplitTool(), new MergeTool(), new DeleteTool(), new ClassifyTool(), new SegmentTool(), new BoxTool(), new BrushTool(), new EraserTool(), new RegionTool()];
}
