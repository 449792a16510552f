/**
 * The live page's three files, served from memory: the HTML and the style below, and the script,
 * which is `client.ts` in this folder compiled by the project's own build (`make build`: tsc) into
 * `client.js` beside this file. Run from the sources (tsx, in tests) there is no `client.js`: the
 * script is then compiled from `client.ts` once, with the TypeScript compiler the checkout has.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export interface PageAsset {
  type: string;
  body: Buffer;
}

const HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>hsx-gateway</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/page.css">
<script type="module" src="/page.js"></script>
</head>
<body>
<header>
  <h1>hsx-gateway <span id="gw-id">…</span></h1>
  <span id="live" class="live off" title="live event stream">connecting</span>
  <form id="token-form" autocomplete="off">
    <span id="who"></span>
    <input id="token" type="password" placeholder="access token" aria-label="access token">
    <button type="submit">use token</button>
  </form>
</header>
<main>
  <section id="alerts-section"><h2>Recent errors and alerts</h2><ul id="alerts"><li class="none">none</li></ul></section>
  <section><h2>Links</h2><table id="links"><thead><tr><th>link</th><th>targets</th><th>last scan</th><th>scan error</th></tr></thead><tbody></tbody></table></section>
  <section><h2>Devices</h2>
    <table id="devices"><thead><tr><th>device</th><th>link / target</th><th>status</th><th>image</th><th>version</th><th>SHA-256</th><th>slots</th><th>last boot</th><th>flash wear</th><th>progress</th></tr></thead><tbody></tbody></table>
  </section>
  <section><h2>Jobs</h2>
    <form id="submit-form" hidden>
      <label>link <select id="f-link"></select></label>
      <label>image <select id="f-image"></select></label>
      <label>nodes <input id="f-nodes" placeholder="all scanned, or 1-4,9" size="14"></label>
      <label><input id="f-force" type="checkbox"> force</label>
      <button type="submit" id="f-submit">submit job</button>
      <span id="f-result" role="status"></span>
    </form>
    <p id="viewer-note" hidden>You are a viewer: you can watch jobs but not submit or cancel them.</p>
    <table id="jobs"><thead><tr><th>job</th><th>link</th><th>image</th><th>state</th><th>targets</th><th>submitted</th><th></th></tr></thead><tbody></tbody></table>
  </section>
</main>
</body>
</html>
`;

const CSS = `:root{--ok:#1b7f3b;--bad:#b3261e;--warn:#9a6700;--mute:#667;--line:#dde;font:14px/1.4 system-ui,sans-serif;color:#123}
body{margin:0}header{display:flex;gap:1em;align-items:center;padding:.6em 1em;background:#12324a;color:#fff;flex-wrap:wrap}
h1{font-size:1.2em;margin:0}h2{font-size:1em;margin:1.2em 0 .4em}main{padding:0 1em 2em}
#token-form{margin-left:auto;display:flex;gap:.4em;align-items:center}#who{font-size:.9em;opacity:.9}
.live{font-size:.85em;padding:.1em .6em;border-radius:1em;background:#a33}.live.on{background:#2a7}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid var(--line);padding:.25em .5em;text-align:left;vertical-align:top}
th{font-weight:600;color:var(--mute);font-size:.85em}code,.sha{font-family:ui-monospace,monospace;font-size:.9em}
.st{font-weight:600}.st-READY,.st-SUCCEEDED,.st-SKIPPED{color:var(--ok)}.st-FAILED,.st-TIMED_OUT{color:var(--bad)}.st-CANCELED{color:var(--warn)}
.st-FLASHING,.st-IN_PROGRESS,.st-QUEUED{color:#1557a0}.st-EMPTY{color:var(--mute)}
tr.failed{background:#fdeceb}ul#alerts{list-style:none;padding:0;margin:0}
#alerts li{padding:.3em .6em;margin:.2em 0;border-left:4px solid var(--mute)}#alerts li.error{border-color:var(--bad);background:#fdeceb}
#alerts li.warning{border-color:var(--warn);background:#fff6dd}#alerts li.none{color:var(--mute)}
.bar{width:10em;height:.9em;background:#e6e9ef;border-radius:.45em;overflow:hidden}.bar>i{display:block;height:100%;background:#2a7;width:0}
.chip{display:inline-block;margin:0 .3em .2em 0;padding:0 .4em;border-radius:.3em;background:#eef}.chip.bad{background:#fdeceb;color:var(--bad)}
.chip.good{background:#e7f5ec}.err{color:var(--bad);font-size:.9em}.wear-hi{color:var(--bad);font-weight:600}
form#submit-form{display:flex;gap:.8em;align-items:center;flex-wrap:wrap;margin-bottom:.6em}
[hidden]{display:none!important}
`;

let script: Buffer | null = null;

/** The compiled client: client.js beside this module (the build), else client.ts compiled now. */
function clientScript(): Buffer {
  if (script) return script;
  try {
    script = readFileSync(fileURLToPath(new URL('./client.js', import.meta.url)));
  } catch {
    const source = readFileSync(fileURLToPath(new URL('./client.ts', import.meta.url)), 'utf8');
    const ts = createRequire(import.meta.url)('typescript') as typeof import('typescript');
    const out = ts.transpileModule(source, { compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ES2022 } });
    script = Buffer.from(out.outputText);
  }
  // the build's source-map comment points at a file we do not serve
  script = Buffer.from(script.toString('utf8').replace(/\n\/\/# sourceMappingURL=.*\s*$/, '\n'));
  return script;
}

const STATIC: Record<string, () => PageAsset> = {
  '/': () => ({ type: 'text/html; charset=utf-8', body: Buffer.from(HTML) }),
  '/index.html': () => ({ type: 'text/html; charset=utf-8', body: Buffer.from(HTML) }),
  '/page.css': () => ({ type: 'text/css; charset=utf-8', body: Buffer.from(CSS) }),
  '/page.js': () => ({ type: 'text/javascript; charset=utf-8', body: clientScript() }),
};

export function pageAsset(path: string): PageAsset | null {
  const make = Object.prototype.hasOwnProperty.call(STATIC, path) ? STATIC[path] : undefined;
  return make ? make() : null;
}
