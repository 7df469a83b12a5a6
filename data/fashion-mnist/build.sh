#!/usr/bin/env bash
# Regenerates data/fashion-mnist from its source (see README.md here). Needs the .NET 10 SDK, apt-get and dpkg (Debian or Ubuntu; run apt-get update once first).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec dotnet run --project src/PeftSharp.Lab -- data build fashion-mnist "$@"
