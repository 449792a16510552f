// The lanes that are not part of `make test` (see the Makefile): same settings, other files.
export default {
  files: ['test/lanes/**/*.ts'],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx'],
  workerThreads: false,
  timeout: '2m',
};
