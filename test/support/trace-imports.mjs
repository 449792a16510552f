// Test-only (test/cli-startup.test.ts): records every module URL the process resolves, one per line,
// in the file $HSX_TRACE_IMPORTS, so a test can tell which of our modules a CLI run loaded.
import { register } from 'node:module';

register(new URL('./trace-imports-hooks.mjs', import.meta.url), { data: { file: process.env.HSX_TRACE_IMPORTS } });
