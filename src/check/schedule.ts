// The run-length form of a schedule ("0*12,1*3,0"), without dependencies, so the browser page can use it too.

/** Run-length form of a schedule: "0*12,1*3,0" (thread index, times). */
export function encodeSchedule(schedule: readonly number[]): string {
  const runs: string[] = [];
  for (let i = 0; i < schedule.length; ) {
    let j = i;
    while (j < schedule.length && schedule[j] === schedule[i]) j++;
    runs.push(j - i === 1 ? `${schedule[i]}` : `${schedule[i]}*${j - i}`);
    i = j;
  }
  return runs.join(',');
}
