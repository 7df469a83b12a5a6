#!/usr/bin/env bash
# Runs a notebook's C# code cells as one console program, without .NET Interactive: a stopgap until the Lab's
# notebook runner runs these notebooks. Cells that load packages or the kernel extension (#r, #i, #!, Kernel.Root) are
# skipped, so `using` lines must sit in the first code cell, names must not be declared twice, and types must be
# one-line records.
# Usage: notebooks/run-as-console.sh notebooks/03-bottleneck-adapters.ipynb
set -euo pipefail
notebook=$(realpath "$1")
root=$(cd "$(dirname "$0")/.." && pwd)
work="$root/artifacts/notebook-harness/$(basename "$notebook" .ipynb)"   # inside the repo: its build props apply
mkdir -p "$work"
python3 - "$notebook" "$work/Program.cs" <<'PY'
import json, sys
cells = json.load(open(sys.argv[1]))["cells"]
out, types = [], []
for c in cells:
    if c["cell_type"] != "code": continue
    src = "".join(c["source"])
    if any(l.lstrip().startswith(("#r", "#i", "#!")) for l in src.splitlines()) or "Kernel.Root" in src: continue
    # A program wants type declarations after its statements: one-line records move to the end.
    kept = [l for l in src.splitlines() if not l.startswith("record ")]
    types += [l for l in src.splitlines() if l.startswith("record ")]
    out.append("\n".join(kept))
open(sys.argv[2], "w").write("\n\n".join(out + types) + "\n")
PY
cat > "$work/Harness.csproj" <<XML
<Project Sdk="Microsoft.NET.Sdk">
  <Import Project="$root/build/LibTorch.props" />
  <PropertyGroup><OutputType>Exe</OutputType><TreatWarningsAsErrors>false</TreatWarningsAsErrors><NoWarn>\$(NoWarn);CS8321;CS0219</NoWarn></PropertyGroup>
  <ItemGroup><ProjectReference Include="$root/src/PeftSharp/PeftSharp.csproj" /></ItemGroup>
</Project>
XML
cd "$(dirname "$notebook")" && OMP_WAIT_POLICY=PASSIVE dotnet run --project "$work/Harness.csproj" -c Release
