// Parses an AsyncAPI document with the official parser (@asyncapi/parser) and prints one JSON
// object: the diagnostics (severity 0 error, 1 warning, 2 information, 3 hint) and what it found.
import { Parser, fromFile } from '@asyncapi/parser';

const { document, diagnostics } = await fromFile(new Parser(), process.argv[2]).parse();
const found = document && {
  version: document.version(),
  channels: document.channels().all().map((channel) => channel.address()),
  operations: document.operations().all().map((operation) => operation.id()),
  messages: document.components().messages().all().map((message) => message.name()),
};
console.log(JSON.stringify({
  diagnostics: diagnostics.map((d) => ({ severity: d.severity, code: d.code, message: d.message, path: d.path })),
  document: found ?? null,
}));
