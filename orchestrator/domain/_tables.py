"""The manufacturer and module tables of the seed (the check endpoint page).

Generated from ``shared/seed/000_4904d9e5834586b6.txt``; the seed is the authority.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Module:
    manuf: str
    model: str
    manuf_code: str
    model_code: str
    chip: bool = False


MODULES: tuple[Module, ...] = (
    Module('FANLUN', 'ESP32', '101', '10101', chip=True),
    Module('nordic', 'nrf52832', '102', '10201', chip=True),
    Module('GigaDevice', 'GD32', '103', '10301', chip=True),
    Module('Miscellaneous', 'Miscellaneous', '100', '10001', chip=True),
    Module('China Mobile', 'M5330-A', '001', '00101'),
    Module('China Mobile', 'M5330', '001', '00102'),
    Module('China Mobile', 'M5312', '001', '00103'),
    Module('China Mobile', 'M5313', '001', '00104'),
    Module('China Mobile', 'S5601', '001', '00105'),
    Module('China Mobile', 'M5310-A', '001', '00106'),
    Module('China Mobile', 'M5310', '001', '00107'),
    Module('China Mobile', 'M5311', '001', '00108'),
    Module('China Mobile', 'M5330-GNSS', '001', '00109'),
    Module('China Mobile', 'M5330-STD', '001', '00110'),
    Module('RINLINK', 'N256', '002', '00201'),
    Module('Lierda', 'NB86-G', '003', '00301'),
    Module('Lierda', 'NB08-01', '003', '00302'),
    Module('u-blox', 'SARA-N200', '004', '00401'),
    Module('Ruijie Networks', 'RG-NB6118', '005', '00501'),
    Module('Ruijie Networks', 'RG-NB6210', '005', '00502'),
    Module('Shanghai Wenheng', 'WH-NB71', '006', '00601'),
    Module('Shanghai Wenheng', 'WH-NB73', '006', '00602'),
    Module('Simware', 'SN12_B8', '007', '00701'),
    Module('ZTE', 'ZM8300', '008', '00801'),
    Module('ZTE', 'ZM8301', '008', '00802'),
    Module('NEOWAY', 'N20', '009', '00901'),
    Module('PCTX', 'T1', '010', '01001'),
    Module('PCTX', 'T101', '010', '01002'),
    Module('PCTX', 'T106', '010', '01003'),
    Module('SUNRAY', 'NH01A', '011', '01101'),
    Module('SUNSEA AIOT', 'SIM7000C', '012', '01201'),
    Module('SUNSEA AIOT', 'SIM7000C-N', '012', '01202'),
    Module('SUNSEA AIOT', 'SIM7020C', '012', '01203'),
    Module('SUNSEA AIOT', 'SIM7030', '012', '01204'),
    Module('MobileTek', 'L620', '013', '01301'),
    Module('Quectel Wireless Solutions Co., Ltd.', 'BC28', '014', '01401'),
    Module('Quectel Wireless Solutions Co., Ltd.', 'BC68', '014', '01402'),
    Module('Quectel Wireless Solutions Co., Ltd.', 'BC35-G', '014', '01403'),
    Module('Quectel Wireless Solutions Co., Ltd.', 'BC95-G', '014', '01404'),
    Module('Quectel Wireless Solutions Co., Ltd.', 'BC26', '014', '01405'),
    Module('Quectel Wireless Solutions Co., Ltd.', 'BC95-B8', '014', '01406'),
    Module('ccfrom', 'CFB-608-B8', '015', '01501'),
    Module('ccfrom', 'CFB-609', '015', '01502'),
    Module('CHEERZING', 'ML5530', '016', '01601'),
    Module('Fibocom Wireless Inc.', 'N700-CN', '017', '01701'),
    Module('EASTCOMPEACE', 'NBM20', '018', '01801'),
    Module('Wutong Group', 'WT208', '019', '01901'),
    Module('GOSUNCN', 'ME3616', '020', '02001'),
    Module('H3C', 'IM2209', '021', '02101'),
    Module('CT-UNITE', 'CT-M201', '022', '02201'),
    Module('CT-UNITE', 'CT-M202', '022', '02202'),
    Module('AI-Link', 'AI-NB15', '023', '02301'),
    Module('UNIONMAN', 'UNB100-G', '024', '02401'),
    Module('Sunniwell', 'S-ModNB00A', '025', '02501'),
    Module('RF-LINK', 'N100', '026', '02601'),
    Module('DWnet', 'TPB23', '027', '02701'),
    Module('DWnet', 'TPB40-8', '027', '02702'),
    Module('DWnet', 'TPB41', '027', '02703'),
    Module('LITEON', 'WNB301H', '028', '02801'),
    Module('FN-LINK', '3115F-R', '029', '02901'),
    Module('Longsung', 'A9600-R2', '030', '03001'),
    Module('Linkwise', 'LT150', '031', '03101'),
    Module('Miscellaneous', 'Miscellaneous', '000', '00001'),
)
