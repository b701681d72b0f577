// Copy the vendored browser libraries (and their licences) into the Python package.
// Run from this folder: `npm ci && npm run build`. The output is committed, so users never need npm.
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "src", "sparsecircuits", "viewer", "static", "vendor");
mkdirSync(out, { recursive: true });

const files = [
  ["cytoscape/dist/cytoscape.min.js", "cytoscape.min.js"],
  ["cytoscape/LICENSE", "cytoscape.LICENSE"],
];
for (const [from, to] of files) {
  copyFileSync(join(here, "node_modules", from), join(out, to));
}
const version = JSON.parse(readFileSync(join(here, "node_modules", "cytoscape", "package.json"))).version;
console.log(`vendored cytoscape ${version} into ${out}`);
