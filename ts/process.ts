/** Facts about other processes that sadm's crash recovery relies on. */

/** Whether a process is alive (this process is): a temporary named by a live process's pid is still in use. */
export function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}
