// Builds the task page into dist/ (the router's static_dir in the test):
// src/app.jsx bundled with esbuild as dist/bundle.js, plus the static files.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dist");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

await build({
  entryPoints: [join(here, "src", "app.jsx")],
  outfile: join(out, "bundle.js"),
  bundle: true,
  format: "iife",
  target: "es2019",
  jsx: "transform",
  loader: { ".js": "jsx" },
  define: { "process.env.NODE_ENV": '"production"' },
  minify: false,
  sourcemap: true,
  logLevel: "warning",
});
for (const f of ["index.html", "wrap_crowd_source.js", "task_config.json"]) {
  copyFileSync(join(here, "src", f), join(out, f));
}
console.log("page built in " + out);
