// The pty pair lives in src (the demo uses it too); tests import it from here.
export { haveSocat, startPtyPair, type PtyPair } from '../../src/link/uart/pty-pair.js';
