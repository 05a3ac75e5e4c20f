/**
 * Prometheus text exposition. Components register their counters and gauges here; gauges are read
 * at scrape time from the component's own state, so nothing is kept twice.
 */
export type Labels = Record<string, string>;
type Sample = { labels: Labels; value: number };

interface Family {
  name: string;
  help: string;
  type: "counter" | "gauge";
  collect: () => Sample[];
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function labelText(labels: Labels): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return "";
  return `{${entries.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`;
}

export class Counter {
  private readonly values = new Map<string, Sample>();

  inc(amount = 1, labels: Labels = {}): void {
    const key = labelText(labels);
    const sample = this.values.get(key);
    if (sample) sample.value += amount;
    else this.values.set(key, { labels, value: amount });
  }

  get(labels: Labels = {}): number {
    return this.values.get(labelText(labels))?.value ?? 0;
  }

  samples(): Sample[] {
    return [...this.values.values()];
  }
}

export class Metrics {
  private readonly families = new Map<string, Family>();

  counter(name: string, help: string): Counter {
    const counter = new Counter();
    this.register({ name, help, type: "counter", collect: () => counter.samples() });
    return counter;
  }

  /** `read` returns one number, or labelled samples for a family such as documents per collection. */
  gauge(name: string, help: string, read: () => number | Sample[]): void {
    this.register({
      name,
      help,
      type: "gauge",
      collect: () => {
        const value = read();
        return typeof value === "number" ? [{ labels: {}, value }] : value;
      },
    });
  }

  private register(family: Family): void {
    if (this.families.has(family.name)) throw new Error(`metric ${family.name} registered twice`);
    this.families.set(family.name, family);
  }

  render(): string {
    let out = "";
    for (const family of this.families.values()) {
      out += `# HELP ${family.name} ${family.help}\n# TYPE ${family.name} ${family.type}\n`;
      for (const sample of family.collect()) out += `${family.name}${labelText(sample.labels)} ${sample.value}\n`;
    }
    return out;
  }
}
