/**
 * What the status page shows of the mirror's resilience: the state of each upstream of a
 * registry with several (failover.ts) and the blob resumes (resume.ts). Both live for the
 * process (across reloads); this only plugs them into rt.sources.
 */
import type { Runtime } from "../../context.ts";
import { resumeStats } from "./resume.ts";
import { upstreamHealth } from "./failover.ts";

export function registerResilience(rt: Runtime): void {
  const health = upstreamHealth(rt);
  const resumes = resumeStats(rt);
  rt.sources.resilience = {
    state: () => ({ upstreams: health.views(), resumes: resumes.views() }),
  };
}
