// Generates the API types: `node scripts/openapi-typescript.mjs IN.json OUT.ts` runs the
// openapi-typescript CLI with this project's options (npm run api:types and
// check-api-types.sh both go through here, so they cannot disagree).
//
// --default-non-nullable=false: a field with a default is optional in a request (the server
// fills it in); only the schema's `required` makes a field mandatory.
//
// openapi-typescript 7 builds its output with the TypeScript compiler API (ts.factory, the
// printer) and declares typescript ^5 as a peer. This project compiles with TypeScript 7, whose
// package has no JavaScript API, so package.json installs TypeScript 5.9 under the alias
// "typescript-api" (and overrides the peer so npm accepts the pair); the resolve hook below
// hands it to openapi-typescript, and only to it.
import { register } from 'node:module';

const [input, output] = process.argv.slice(2);
if (!input || !output) {
  console.error('usage: node scripts/openapi-typescript.mjs IN.json OUT.ts');
  process.exit(2);
}

const hook = `
export async function resolve(specifier, context, next) {
  if (specifier === 'typescript' && context.parentURL?.includes('/node_modules/openapi-typescript/')) return next('typescript-api', context);
  return next(specifier, context);
}`;
register(`data:text/javascript,${encodeURIComponent(hook)}`, import.meta.url);

process.argv = [process.argv[0], 'openapi-typescript', input, '--output', output, '--default-non-nullable=false'];
// the package exports no path to its CLI: load the file
await import(new URL('../node_modules/openapi-typescript/bin/cli.js', import.meta.url).href);
