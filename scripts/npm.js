"use strict";
/**
 * How the build scripts run npm: with this node and the npm that launched them (`npm_execpath`, set under
 * `npm run`), so a script run by one npm does not pick up another from PATH; else the npm on PATH.
 * Returns [command, args] for execFileSync.
 */
function npmCommand(args) {
  const cli = process.env.npm_execpath;
  return cli && /npm-cli\.js$/.test(cli) ? [process.execPath, [cli, ...args]] : ["npm", args];
}

module.exports = { npmCommand };
