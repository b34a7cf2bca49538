"""Open-i report files as NLMCXR_reports.tgz ships them (ecgen-radiology/<n>.xml), written from a dict, and tiny PNGs
named by image id, for the `data=openi` tests."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from PIL import Image

LICENSE = "http://creativecommons.org/licenses/by-nc-nd/4.0/"


def _section(label: str, text: str | None) -> str:
    if not text:  # Open-i writes an empty section as an empty element
        return f'            <AbstractText Label="{label}"/>'
    return f'            <AbstractText Label="{label}">{escape(text)}</AbstractText>'


def _image(image_id: str, n: int) -> str:
    return f"""   <parentImage id={quoteattr(image_id)}>
      <figureId>F{n}</figureId>
      <caption>Xray Chest PA and Lateral</caption>
      <panel type="single">
         <url>/hadoop/storage/radiology/extract/{escape(image_id)}.jpg</url>
         <imgModality>7</imgModality>
         <region type="">
            <id>R1</id>
            <class>Chest</class>
            <type>X-ray</type>
            <coordinates/>
         </region>
      </panel>
   </parentImage>"""


def report_xml(r: dict) -> str:
    """One Open-i report: `r` has uid ("CXR1"), comparison, indication, findings, impression (str, "" or None),
    mesh_major, mesh_automatic (lists of terms) and images (the parentImage ids, in order)."""
    n = r["uid"].removeprefix("CXR")
    mesh = [f"      <major>{escape(t)}</major>" for t in r.get("mesh_major") or []]
    mesh += [f"      <automatic>{escape(t)}</automatic>" for t in r.get("mesh_automatic") or []]
    sections = "\n".join(_section(label, r.get(label.lower()))
                         for label in ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"))
    images = "\n".join(_image(i, k) for k, i in enumerate(r.get("images") or [], 1))
    return f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id={quoteattr(r["uid"])}/>
   <pmcId id="{escape(n)}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{escape(n)}"/>
   <licenseType>open-access</licenseType>
   <licenseURL>{LICENSE}</licenseURL>
   <ccLicense>byncnd</ccLicense>
   <articleURL/>
   <articleDate>2013-08-01</articleDate>
   <articleType>XR</articleType>
   <publisher>Indiana University</publisher>
   <title>Indiana University Chest X-ray Collection</title>
   <note>The data are drawn from multiple hospital systems.</note>
   <specialty>pulmonary diseases</specialty>
   <subset>CXR</subset>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <Journal>
            <JournalIssue>
               <PubDate>
                  <Year>2013</Year>
                  <Month>08</Month>
                  <Day>01</Day>
               </PubDate>
            </JournalIssue>
         </Journal>
         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
         <Abstract>
{sections}
         </Abstract>
         <Affiliation>Indiana University</Affiliation>
         <Language>eng</Language>
         <PublicationTypeList>
            <PublicationType>Radiology Report</PublicationType>
         </PublicationTypeList>
      </Article>
   </MedlineCitation>
   <MeSH>
{chr(10).join(mesh)}
   </MeSH>
{images}
</eCitation>
"""


def write_reports(folder: Path, reports: list[dict]) -> Path:
    """`folder/<n>.xml` for each report (n: its uid's number, as Open-i names the files); returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for r in reports:
        (folder / f"{r['uid'].removeprefix('CXR')}.xml").write_text(report_xml(r), encoding="utf-8")
    return folder


def write_pngs(image_dir: Path, image_ids: list[str], size: int = 16) -> None:
    """A tiny grey PNG `<id>.png` per image id, each a different shade."""
    image_dir.mkdir(parents=True, exist_ok=True)
    for k, i in enumerate(image_ids):
        Image.new("L", (size, size), (37 * k) % 256).save(image_dir / f"{i}.png")
