#!/usr/bin/env node
/*
 * mephisto-router launcher for Mephisto's LocalArchitect, server_type=node.
 *
 * LocalArchitect runs `node server.js` in a copy of this folder, with PORT in
 * the environment, and stops it with SIGTERM. This script starts the
 * mephisto-router binary in this folder on the router's embedded default
 * configuration (port $PORT, static files from ./static, uploads in /tmp/,
 * state in ./mephisto-router.db), forwards SIGTERM, SIGINT and SIGHUP to it
 * and exits with its exit status (128 + N if signal N ended it).
 *
 * The binary is $MEPHISTO_ROUTER_BIN, else `mephisto-router` on PATH.
 *
 * No process is left behind: the router runs in its own session, so it gets
 * each signal once, from this launcher, never a second copy sent to this
 * launcher's process group (a second SIGTERM or SIGINT makes the router stop
 * its workers at once instead of draining them). Node cannot set a parent-
 * death signal itself, so the router is started through util-linux's
 * `setpriv --pdeathsig TERM`: if this launcher dies, even by SIGKILL, the
 * kernel sends the router SIGTERM and it exits (its workers follow their
 * supervisor). The kernel repeats that signal each time the router passes
 * to another of Node's exiting threads, so the router sees "SIGTERM again"
 * and stops its workers at once instead of draining them (app.py's single-
 * threaded Python gives it one signal and a full drain). A /bin/sh step
 * checks, once the death signal is set, that this launcher is still its
 * parent, so a launcher killed in between leaves no orphan either. Without
 * setpriv the router stays in this launcher's process group (a kill of the
 * group still reaches it) and a warning says so.
 *
 * Plain Node.js, no npm dependencies.
 */
'use strict';

const childProcess = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const ME = 'mephisto-router launcher';
const BINARY = 'mephisto-router';
const HERE = __dirname;
const FORWARDED = ['SIGTERM', 'SIGINT', 'SIGHUP'];

function isExecutableFile(p) {
  try {
    if (!fs.statSync(p).isFile()) return false;
    fs.accessSync(p, fs.constants.X_OK);
    return true;
  } catch (e) {
    return false;
  }
}

function onPath(name) {
  const dirs = (process.env.PATH || '').split(path.delimiter);
  for (let i = 0; i < dirs.length; i++) {
    if (!dirs[i]) continue;
    const p = path.join(dirs[i], name);
    if (isExecutableFile(p)) return p;
  }
  return null;
}

function fail(message, status) {
  process.stderr.write(ME + ': ' + message + '\n');
  process.exit(status);
}

function findRouter() {
  const env = process.env.MEPHISTO_ROUTER_BIN;
  if (env) {
    const p = path.resolve(env);
    if (!isExecutableFile(p)) {
      fail('MEPHISTO_ROUTER_BIN=' + env + ' is not an executable file ' +
           '(point it at the mephisto-router binary, or unset it to search PATH)', 127);
    }
    return p;
  }
  const p = onPath(BINARY);
  if (p === null) {
    fail('cannot find the mephisto-router binary: MEPHISTO_ROUTER_BIN is not set ' +
         'and there is no mephisto-router on PATH (install it with `make install`, ' +
         'or set MEPHISTO_ROUTER_BIN to its path)', 127);
  }
  return p;
}

/* setpriv with --pdeathsig (util-linux 2.33 and later), or null. */
function findSetpriv() {
  const p = onPath('setpriv') ||
    (isExecutableFile('/usr/bin/setpriv') ? '/usr/bin/setpriv' : null);
  if (p === null || !isExecutableFile('/bin/sh')) return null;
  const probe = childProcess.spawnSync(p, ['--pdeathsig', 'TERM', '--', '/bin/sh', '-c', ':'],
                                       { stdio: 'ignore', timeout: 5000 });
  return probe.status === 0 ? p : null;
}

function main() {
  const router = findRouter();
  const setpriv = findSetpriv();
  let argv0, args, detached;

  if (setpriv !== null) {
    /* $PPID is the shell's parent when it starts, after setpriv set the
     * death signal: if it is not this launcher any more, the launcher is
     * gone and no signal will come, so do not start. */
    argv0 = setpriv;
    args = ['--pdeathsig', 'TERM', '--', '/bin/sh', '-c',
            '[ "$PPID" = "$1" ] || exit 125; shift; exec "$@"',
            BINARY, String(process.pid), router];
    detached = true;  /* setsid(): its own session and process group */
  } else {
    process.stderr.write(ME + ': setpriv (util-linux) with --pdeathsig not found: ' +
                         'the router stays in this process group and outlives this ' +
                         'launcher if only the launcher is killed with SIGKILL\n');
    argv0 = router;
    args = [];
    detached = false;
  }

  let child = null;
  let exited = false;
  const pending = [];
  FORWARDED.forEach(function (sig) {
    process.on(sig, function () {
      if (child === null) {
        pending.push(sig);
      } else if (!exited) {
        try {
          child.kill(sig);
        } catch (e) {
          /* already gone: its exit event follows */
        }
      }
    });
  });

  child = childProcess.spawn(argv0, args, {
    cwd: HERE,
    env: process.env,
    stdio: ['ignore', 'inherit', 'inherit'],
    detached: detached,
  });
  child.on('error', function (err) {
    exited = true;
    fail('cannot start ' + argv0 + ': ' + err.message, 127);
  });
  child.on('exit', function (code, signal) {
    exited = true;
    if (code !== null) process.exit(code);
    const n = os.constants.signals[signal];
    process.exit(128 + (typeof n === 'number' ? n : 0));
  });
  pending.forEach(function (sig) {
    child.kill(sig);
  });
}

main();
